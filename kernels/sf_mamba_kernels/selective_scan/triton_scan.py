"""Triton segmented selective scan (Mamba-1) with periodic state reset and *logical* batch folding.

Math (same as :mod:`.reference`; see docs/kernels.md)::

    delta' = softplus(delta + delta_bias)                 (both optional)
    a_t    = exp(delta'_t * A)   but a_t := 0 where t % reset_every == 0 (segmented scan)
    h_t    = a_t * h_{t-1} + delta'_t * B_t * u_t          (fp32 state, every input dtype)
    out_t  = (<C_t, h_t> + D * u_t) * silu(z_t)            (D, z optional)

Logical fold: with ``fold=k`` program ``(p, d)`` scans batch rows ``[p*k, min((p+1)*k, batch))`` of
channel ``d`` as one stream of ``n_rows * L`` tokens. Token ``j`` of that stream is row
``p*k + j // L``, position ``j % L`` of the *unfolded* tensors, so folding is pure index arithmetic:
no copies, and the conv before the scan can run unfolded.

Kernels (one program per (row group, channel), time tiles of ``BLOCK_T`` tokens, all ``N`` states of
a tile at once as an ``[BLOCK_N, BLOCK_T]`` fp32 block):

- forward: for each tile, inject the carried state into column 0, ``tl.associative_scan`` the
  pairs ``(a, x)``, reduce against C, store; the entering carry of every tile goes to ``hs``
  (n_groups, D, n_tiles, N) fp32 for the backward (mamba_ssm's ``x`` analogue).
- backward: tiles in reverse; recompute h from ``hs``; adjoint ``dh_t = C_t dy_t + a_{t+1} dh_{t+1}``
  as a reverse scan, with ``a_{t+1}`` recomputed from delta at ``t+1`` and forced to 0 at reset
  positions (the mirror of the forward reset). dB/dC are shared by the channels of a group and go
  through fp32 ``atomic_add`` (order-nondeterministic, like mamba_ssm); dA, dD and d(delta_bias)
  are written per (group, channel) and summed on the host (deterministic).

The reverse scan uses ``tl.associative_scan(..., reverse=True)`` unless a one-time probe on the
GPU finds that it disagrees with the suffix recurrence (triton issue #4362), in which case the
``tl.flip`` formulation is used. ``SF_MAMBA_SCAN_REVERSE=native|flip|auto`` overrides the choice.

Importing this module needs triton but no GPU. Whether the kernels run compiled or in the
interpreter is decided by triton when this module is imported (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _linear_combine(a_left, b_left, a_right, b_right):
    # (a_l, b_l) then (a_r, b_r): h -> a_r * (a_l * h + b_l) + b_r
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x):
    # threshold 20 like mamba_ssm / torch: softplus(x) == x beyond it
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


# Shape-dependent ints are not specialised: one compiled kernel per dtype/flags/tile instead of one
# per batch size and stride pattern (the benchmark and LUT sweeps would otherwise recompile a lot).
_SHAPE_INTS = ["batch", "length", "n_channels", "channels_per_group", "fold", "reset_every", "n_tiles_max"]
_FWD_STRIDES = ["su_b", "su_d", "sdl_b", "sdl_d", "sz_b", "sz_d", "so_b", "so_d",
                "sB_b", "sB_g", "sB_n", "sC_b", "sC_g", "sC_n"]
_BWD_STRIDES = ["su_b", "su_d", "sdl_b", "sdl_d", "sz_b", "sz_d", "sdo_b", "sdo_d",
                "sB_b", "sB_g", "sB_n", "sC_b", "sC_g", "sC_n", "sdB_b", "sdB_g", "sdB_n"]

# Layout: a program owns BLOCK_D channels of one B/C group. Its state block has BLOCK_R = BLOCK_D *
# BLOCK_N rows, row r <-> (local channel r // BLOCK_N, state r % BLOCK_N), and BLOCK_T time columns.
# Per-channel values ([BLOCK_D, BLOCK_T]) reach the rows through a broadcast + reshape, B/C tiles
# ([BLOCK_N, BLOCK_T]) are loaded once per program and shared by its BLOCK_D channels, and sums
# over states / channels are reshapes to [BLOCK_D, BLOCK_N, BLOCK_T] + tl.sum. The scan itself is
# always 2-D along the time axis.


@triton.jit(do_not_specialize=_SHAPE_INTS + _FWD_STRIDES)
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dbias_ptr, out_ptr, hs_ptr,
    batch, length, n_state, n_channels, channels_per_group, fold, reset_every, n_tiles_max,
    su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, so_b, so_d,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, SAVE_HS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_group = tl.program_id(0)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    row0 = pid_group * fold
    n_rows = tl.minimum(fold, batch - row0)
    total = n_rows * length  # folded sequence length of this program
    n_tiles = (total + BLOCK_T - 1) // BLOCK_T
    grp = d0 // channels_per_group  # BLOCK_D divides channels_per_group: one group per program

    chans = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_state
    offs_r = tl.arange(0, BLOCK_R)
    r_chan = d0 + offs_r // BLOCK_N
    r_state = offs_r % BLOCK_N
    mask_r = r_state < n_state
    cols = tl.arange(0, BLOCK_T)
    A2 = tl.load(A_ptr + r_chan * n_state + r_state, mask=mask_r, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        d_skip = tl.load(D_ptr + chans).to(tl.float32)
    if HAS_DBIAS:
        bias = tl.load(dbias_ptr + chans).to(tl.float32)
    hs_base = (pid_group * n_channels + r_chan) * n_tiles_max

    h = tl.zeros([BLOCK_R], dtype=tl.float32)
    for tile in range(n_tiles):
        j = tile * BLOCK_T + cols
        valid = j < total
        row = (row0 + j // length).to(tl.int64)
        pos = j % length
        valid2 = valid[None, :] & (chans[:, None] >= 0)  # [BLOCK_D, BLOCK_T]
        u = tl.load(u_ptr + row[None, :] * su_b + chans[:, None] * su_d + pos[None, :],
                    mask=valid2, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row[None, :] * sdl_b + chans[:, None] * sdl_d + pos[None, :],
                     mask=valid2, other=0.0).to(tl.float32)
        if HAS_DBIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        mask_nt = mask_n[:, None] & valid[None, :]
        Bt = tl.load(B_ptr + row[None, :] * sB_b + grp * sB_g + offs_n[:, None] * sB_n + pos[None, :],
                     mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + row[None, :] * sC_b + grp * sC_g + offs_n[:, None] * sC_n + pos[None, :],
                     mask=mask_nt, other=0.0).to(tl.float32)
        dt_r = tl.reshape(tl.broadcast_to(dt[:, None, :], (BLOCK_D, BLOCK_N, BLOCK_T)), (BLOCK_R, BLOCK_T))
        x = tl.reshape((dt * u)[:, None, :] * Bt[None, :, :], (BLOCK_R, BLOCK_T))
        a = tl.exp2(dt_r * A2[:, None])
        if HAS_RESET:
            a = tl.where((j % reset_every == 0)[None, :], 0.0, a)
        a = tl.where(valid[None, :], a, 1.0)  # identity step on the ragged tail keeps the carry
        if SAVE_HS:
            tl.store(hs_ptr + (hs_base + tile) * n_state + r_state, h, mask=mask_r)
        x = tl.where(cols[None, :] == 0, x + a * h[:, None], x)
        _, hh = tl.associative_scan((a, x), 1, _linear_combine)
        h = tl.sum(tl.where(cols[None, :] == BLOCK_T - 1, hh, 0.0), 1)
        y = tl.sum(tl.reshape(hh, (BLOCK_D, BLOCK_N, BLOCK_T)) * Ct[None, :, :], 1)  # [BLOCK_D, BLOCK_T]
        if HAS_D:
            y = y + d_skip[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + row[None, :] * sz_b + chans[:, None] * sz_d + pos[None, :],
                         mask=valid2, other=0.0).to(tl.float32)
            y = y * zt * _sigmoid(zt)
        tl.store(out_ptr + row[None, :] * so_b + chans[:, None] * so_d + pos[None, :],
                 y.to(out_ptr.dtype.element_ty), mask=valid2)


@triton.jit(do_not_specialize=_SHAPE_INTS + _BWD_STRIDES)
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dbias_ptr, hs_ptr, dout_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_part_ptr, dD_part_ptr, ddbias_part_ptr,
    batch, length, n_state, n_channels, channels_per_group, fold, reset_every, n_tiles_max,
    su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, sdo_b, sdo_d,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sdB_b, sdB_g, sdB_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, REVERSE_BY_FLIP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # du, ddelta, dz are contiguous (batch, D, L); dB/dC are fp32 with the given strides (unit along L).
    pid_group = tl.program_id(0)
    d0 = tl.program_id(1).to(tl.int64) * BLOCK_D
    row0 = pid_group * fold
    n_rows = tl.minimum(fold, batch - row0)
    total = n_rows * length
    n_tiles = (total + BLOCK_T - 1) // BLOCK_T
    grp = d0 // channels_per_group

    chans = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_state
    offs_r = tl.arange(0, BLOCK_R)
    r_chan = d0 + offs_r // BLOCK_N
    r_state = offs_r % BLOCK_N
    mask_r = r_state < n_state
    cols = tl.arange(0, BLOCK_T)
    A_nat = tl.load(A_ptr + r_chan * n_state + r_state, mask=mask_r, other=0.0).to(tl.float32)
    A2 = A_nat * 1.4426950408889634
    d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        d_skip = tl.load(D_ptr + chans).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DBIAS:
        bias = tl.load(dbias_ptr + chans).to(tl.float32)
    hs_base = (pid_group * n_channels + r_chan) * n_tiles_max

    dh_carry = tl.zeros([BLOCK_R], dtype=tl.float32)  # dh at column 0 of the later tile
    dA_acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    for step in range(n_tiles):
        tile = n_tiles - 1 - step
        j = tile * BLOCK_T + cols
        valid = j < total
        row = (row0 + j // length).to(tl.int64)
        pos = j % length
        valid2 = valid[None, :] & (chans[:, None] >= 0)
        mask_nt = mask_n[:, None] & valid[None, :]
        u = tl.load(u_ptr + row[None, :] * su_b + chans[:, None] * su_d + pos[None, :],
                    mask=valid2, other=0.0).to(tl.float32)
        dt_raw = tl.load(delta_ptr + row[None, :] * sdl_b + chans[:, None] * sdl_d + pos[None, :],
                         mask=valid2, other=0.0).to(tl.float32) + bias[:, None]
        dt = dt_raw
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        Bt = tl.load(B_ptr + row[None, :] * sB_b + grp * sB_g + offs_n[:, None] * sB_n + pos[None, :],
                     mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + row[None, :] * sC_b + grp * sC_g + offs_n[:, None] * sC_n + pos[None, :],
                     mask=mask_nt, other=0.0).to(tl.float32)

        # 1) recompute the forward states of this tile from the saved entering carry
        dt_r = tl.reshape(tl.broadcast_to(dt[:, None, :], (BLOCK_D, BLOCK_N, BLOCK_T)), (BLOCK_R, BLOCK_T))
        dtu_r = tl.reshape(tl.broadcast_to((dt * u)[:, None, :], (BLOCK_D, BLOCK_N, BLOCK_T)), (BLOCK_R, BLOCK_T))
        B_r = tl.reshape(tl.broadcast_to(Bt[None, :, :], (BLOCK_D, BLOCK_N, BLOCK_T)), (BLOCK_R, BLOCK_T))
        a = tl.exp2(dt_r * A2[:, None])
        if HAS_RESET:
            a = tl.where((j % reset_every == 0)[None, :], 0.0, a)
        a = tl.where(valid[None, :], a, 1.0)
        x_raw = dtu_r * B_r
        h_in = tl.load(hs_ptr + (hs_base + tile) * n_state + r_state, mask=mask_r, other=0.0)
        x = tl.where(cols[None, :] == 0, x_raw + a * h_in[:, None], x_raw)
        _, hh = tl.associative_scan((a, x), 1, _linear_combine)

        # 2) output gate
        dout = tl.load(dout_ptr + row[None, :] * sdo_b + chans[:, None] * sdo_d + pos[None, :],
                       mask=valid2, other=0.0).to(tl.float32)
        out_off = (row[None, :] * n_channels + chans[:, None]) * length + pos[None, :]
        dy = dout
        if HAS_Z:
            zt = tl.load(z_ptr + row[None, :] * sz_b + chans[:, None] * sz_d + pos[None, :],
                         mask=valid2, other=0.0).to(tl.float32)
            y_pre = tl.sum(tl.reshape(hh, (BLOCK_D, BLOCK_N, BLOCK_T)) * Ct[None, :, :], 1) + d_skip[:, None] * u
            sig = _sigmoid(zt)
            dz = dout * y_pre * sig * (1.0 + zt * (1.0 - sig))
            tl.store(dz_ptr + out_off, dz.to(dz_ptr.dtype.element_ty), mask=valid2)
            dy = dout * zt * sig

        # 3) adjoint: dh_t = C_t dy_t + a_{t+1} dh_{t+1}, with a_{t+1} = 0 where t+1 restarts or ends
        j1 = j + 1
        valid1 = j1 < total
        row1 = (row0 + j1 // length).to(tl.int64)
        pos1 = j1 % length
        dt1 = tl.load(delta_ptr + row1[None, :] * sdl_b + chans[:, None] * sdl_d + pos1[None, :],
                      mask=valid1[None, :] & (chans[:, None] >= 0), other=0.0).to(tl.float32) + bias[:, None]
        if SOFTPLUS:
            dt1 = _softplus(dt1)
        dt1_r = tl.reshape(tl.broadcast_to(dt1[:, None, :], (BLOCK_D, BLOCK_N, BLOCK_T)), (BLOCK_R, BLOCK_T))
        a_next = tl.exp2(dt1_r * A2[:, None])
        if HAS_RESET:
            a_next = tl.where((j1 % reset_every == 0)[None, :], 0.0, a_next)
        a_next = tl.where(valid1[None, :], a_next, 0.0)
        g = tl.reshape(dy[:, None, :] * Ct[None, :, :], (BLOCK_R, BLOCK_T))
        g = tl.where(cols[None, :] == BLOCK_T - 1, g + a_next * dh_carry[:, None], g)
        if REVERSE_BY_FLIP:
            _, dh_flipped = tl.associative_scan((tl.flip(a_next, 1), tl.flip(g, 1)), 1, _linear_combine)
            dh = tl.flip(dh_flipped, 1)
        else:
            _, dh = tl.associative_scan((a_next, g), 1, _linear_combine, reverse=True)
        dh_carry = tl.sum(tl.where(cols[None, :] == 0, dh, 0.0), 1)

        # 4) local gradients; ah = a_t * h_{t-1} without a division (exactly 0 at resets)
        ah = hh - x_raw
        dh3 = tl.reshape(dh, (BLOCK_D, BLOCK_N, BLOCK_T))
        du = dy * d_skip[:, None] + dt * tl.sum(dh3 * Bt[None, :, :], 1)
        ddt = u * tl.sum(dh3 * Bt[None, :, :], 1) + tl.sum(tl.reshape(dh * A_nat[:, None] * ah,
                                                                       (BLOCK_D, BLOCK_N, BLOCK_T)), 1)
        if SOFTPLUS:
            ddt = ddt * tl.where(dt_raw <= 20.0, _sigmoid(dt_raw), 1.0)
        ddt = tl.where(valid2, ddt, 0.0)
        tl.store(du_ptr + out_off, du.to(du_ptr.dtype.element_ty), mask=valid2)
        tl.store(ddelta_ptr + out_off, ddt.to(ddelta_ptr.dtype.element_ty), mask=valid2)
        dA_acc += tl.sum(dh * dt_r * ah, 1)
        # dB/dC: summed over this program's channels first, then one atomic per (state, token)
        dB = tl.sum(tl.reshape(dh * dtu_r, (BLOCK_D, BLOCK_N, BLOCK_T)), 0)
        dy_r = tl.reshape(tl.broadcast_to(dy[:, None, :], (BLOCK_D, BLOCK_N, BLOCK_T)), (BLOCK_R, BLOCK_T))
        dC = tl.sum(tl.reshape(hh * dy_r, (BLOCK_D, BLOCK_N, BLOCK_T)), 0)
        dbc_off = row[None, :] * sdB_b + grp * sdB_g + offs_n[:, None] * sdB_n + pos[None, :]
        tl.atomic_add(dB_ptr + dbc_off, dB, mask=mask_nt)
        tl.atomic_add(dC_ptr + dbc_off, dC, mask=mask_nt)
        dD_acc += dy * u
        dbias_acc += ddt

    part = pid_group * n_channels
    tl.store(dA_part_ptr + (part + r_chan) * n_state + r_state, dA_acc, mask=mask_r)
    tl.store(dD_part_ptr + part + chans, tl.sum(dD_acc, 1))
    tl.store(ddbias_part_ptr + part + chans, tl.sum(dbias_acc, 1))


@triton.jit
def _reverse_probe_kernel(a_ptr, b_ptr, out_ptr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_T + tl.arange(0, BLOCK_T)[None, :]
    a = tl.load(a_ptr + offs)
    b = tl.load(b_ptr + offs)
    _, s = tl.associative_scan((a, b), 1, _linear_combine, reverse=True)
    tl.store(out_ptr + offs, s)


# ----------------------------------------------------------------------------------------------
# host side


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def suffix_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s_t = a_t * s_{t+1} + b_t along the last dim (the semantics the backward needs)."""
    out = torch.empty_like(b)
    s = torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1] - 1, -1, -1):
        s = a[..., t] * s + b[..., t]
        out[..., t] = s
    return out


_REVERSE_OK: dict = {}


def num_warps_for(block_rows: int, block_t: int) -> int:
    return 4 if block_rows * block_t <= 2048 else 8


def reverse_scan_is_native(device: torch.device, block_n: int, block_t: int) -> bool:
    """True if ``associative_scan(reverse=True)`` computes the suffix recurrence on this device.

    Probed once per (device, tile shape) on the GPU (triton issue #4362); the interpreter
    implements it as flip-scan-flip, which is correct.
    """
    mode = os.environ.get("SF_MAMBA_SCAN_REVERSE", "auto")
    if mode not in ("auto", "native", "flip"):
        raise ValueError(f"SF_MAMBA_SCAN_REVERSE must be auto, native or flip, got {mode!r}")
    if mode != "auto":
        return mode == "native"
    if device.type != "cuda" or interpreting():
        return True
    num_warps = num_warps_for(block_n, block_t)  # the scan's lowering depends on the warp layout
    key = (str(device), block_n, block_t, num_warps)
    if key not in _REVERSE_OK:
        gen = torch.Generator(device="cpu").manual_seed(0)
        a = torch.rand(block_n, block_t, generator=gen).to(device)
        b = torch.randn(block_n, block_t, generator=gen).to(device)
        out = torch.empty_like(b)
        _reverse_probe_kernel[(1,)](a, b, out, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=num_warps)
        expected = suffix_recurrence(a.double(), b.double()).float()
        _REVERSE_OK[key] = bool(torch.allclose(out, expected, rtol=1e-4, atol=1e-5))
        if not _REVERSE_OK[key]:
            warnings.warn(f"tl.associative_scan(reverse=True) is wrong on {torch.cuda.get_device_name(device)} "
                          f"for a [{block_n}x{block_t}] tile (triton issue #4362); the selective-scan backward "
                          "uses the tl.flip formulation instead", RuntimeWarning, stacklevel=2)
    return _REVERSE_OK[key]


def pick_block_t(seq_len: int, block_rows: int) -> int:
    """Time tile: the folded length rounded up to a power of 2, capped so a tile is <= 4096 states."""
    cap = max(16, min(1024, 4096 // block_rows))
    return max(16, min(triton.next_power_of_2(seq_len), cap))


def pick_block_d(channels_per_group: int, block_n: int, requested: int | None = None) -> int:
    """Channels per program: they share one B/C tile load and one dB/dC atomic per element.

    The largest power of 2 that divides ``channels_per_group`` and keeps BLOCK_D * BLOCK_N <= 32,
    unless ``requested`` (or ``SF_MAMBA_SCAN_BLOCK_D``) says otherwise. (A GPU-untuned default.)
    """
    if requested is None and os.environ.get("SF_MAMBA_SCAN_BLOCK_D"):
        requested = int(os.environ["SF_MAMBA_SCAN_BLOCK_D"])
    if requested is not None:
        if requested < 1 or requested & (requested - 1) or channels_per_group % requested:
            raise ValueError(f"block_d must be a power of 2 dividing the channels per B/C group "
                             f"({channels_per_group}), got {requested}")
        return requested
    block_d = 1
    while block_d * 2 * block_n <= 32 and channels_per_group % (block_d * 2) == 0:
        block_d *= 2
    return block_d


def _check_arg(name, x, *, ndims, device, optional=False):
    if x is None:
        if optional:
            return
        raise TypeError(f"{name} is required")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; the Triton scan supports float16, bfloat16 and float32")
    if x.dim() not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dims, got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but u is on {device}; all inputs must share one device")
    if x.numel() and x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous along its last dimension (stride 1), got strides "
                         f"{tuple(x.stride())}; call .contiguous()")


def validate_triton_inputs(u, delta, A, B, C, D, z, delta_bias, reset_every, fold):
    """Raise a clear error naming the bad argument; returns (batch, channels, length, n_state, groups)."""
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    device = u.device
    _check_arg("u", u, ndims=(3,), device=device)
    batch, channels, length = u.shape
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(f"u is on {device}: the Triton scan needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    _check_arg("delta", delta, ndims=(3,), device=device)
    _check_arg("A", A, ndims=(2,), device=device)
    _check_arg("B", B, ndims=(2, 3, 4), device=device)
    _check_arg("C", C, ndims=(2, 3, 4), device=device)
    _check_arg("D", D, ndims=(1,), device=device, optional=True)
    _check_arg("z", z, ndims=(3,), device=device, optional=True)
    _check_arg("delta_bias", delta_bias, ndims=(1,), device=device, optional=True)
    if tuple(delta.shape) != tuple(u.shape):
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if z is not None and tuple(z.shape) != tuple(u.shape):
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state), got {tuple(A.shape)}")
    n_state = A.shape[1]
    if n_state < 1:
        raise ValueError(f"A must have d_state >= 1, got {tuple(A.shape)}")
    groups = None
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 2:
            expected, g = (channels, n_state), channels
        elif x.dim() == 3:
            expected, g = (batch, n_state, length), 1
        else:
            g = x.shape[1]
            if g < 1 or channels % g:
                raise ValueError(f"{name} has {g} groups, which must divide channels={channels}")
            expected = (batch, g, n_state, length)
        if tuple(x.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        if groups is not None and g != groups:
            raise ValueError(f"B and C must have the same layout/groups, got shapes {tuple(B.shape)} and {tuple(C.shape)}")
        groups = g
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and tuple(x.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {tuple(x.shape)}")
    if not isinstance(fold, int) or isinstance(fold, bool) or fold < 1:
        raise ValueError(f"fold must be a positive int, got {fold!r}")
    if reset_every is not None:
        if not isinstance(reset_every, int) or isinstance(reset_every, bool) or reset_every < 1:
            raise ValueError(f"reset_every must be a positive int or None, got {reset_every!r}")
        k = min(fold, batch) if batch else 1
        for rows in sorted({k, batch % k} - {0}):
            if (rows * length) % reset_every:
                raise ValueError(f"reset_every={reset_every} must divide the folded sequence length "
                                 f"{rows * length} ({rows} row(s) of length {length} folded)")
    return batch, channels, length, n_state, groups


def _as_grouped(x: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """B or C as (batch, G, N, L) with unit stride along L (a view, except for fixed (D, N) ones)."""
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 2:  # fixed per-channel B/C: materialise as D groups of one channel each
        return x[None, :, :, None].expand(batch, -1, -1, length).contiguous()
    return x


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reset_every, fold, block_t, block_d,
                save):
        batch, channels, length = u.shape
        n_state = A.shape[1]
        Bg, Cg = _as_grouped(B, batch, length), _as_grouped(C, batch, length)
        groups = Bg.shape[1]
        k = max(1, min(fold, batch))
        n_groups = triton.cdiv(batch, k)
        block_n = triton.next_power_of_2(n_state)
        block_d = pick_block_d(channels // groups, block_n, block_d)
        block_t = block_t or pick_block_t(k * length, block_d * block_n)
        n_tiles_max = triton.cdiv(k * length, block_t)
        A_c = A.contiguous()
        out = torch.empty(batch, channels, length, device=u.device, dtype=u.dtype)
        hs = (torch.empty(n_groups, channels, n_tiles_max, n_state, device=u.device, dtype=torch.float32)
              if save else out)
        zz = z if z is not None else u
        if batch and channels and length:
            _scan_fwd_kernel[(n_groups, channels // block_d)](
                u, delta, A_c, Bg, Cg, D if D is not None else A_c, zz,
                delta_bias if delta_bias is not None else A_c, out, hs,
                batch, length, n_state, channels, channels // groups, k, reset_every or 1, n_tiles_max,
                u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
                out.stride(0), out.stride(1),
                Bg.stride(0), Bg.stride(1), Bg.stride(2), Cg.stride(0), Cg.stride(1), Cg.stride(2),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_RESET=reset_every is not None, SAVE_HS=save,
                BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=block_d * block_n, BLOCK_T=block_t,
                num_warps=num_warps_for(block_d * block_n, block_t),
            )
        if save:
            ctx.save_for_backward(u, delta, A_c, B, C, D, z, delta_bias, hs)
            ctx.config = (bool(delta_softplus), reset_every, k, block_t, block_d, n_tiles_max)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, hs = ctx.saved_tensors
        softplus, reset_every, k, block_t, block_d, n_tiles_max = ctx.config
        batch, channels, length = u.shape
        n_state = A.shape[1]
        Bg, Cg = _as_grouped(B, batch, length), _as_grouped(C, batch, length)
        groups = Bg.shape[1]
        n_groups = triton.cdiv(batch, k)
        block_n = triton.next_power_of_2(n_state)
        dout = dout.contiguous()
        du = torch.empty(batch, channels, length, device=u.device, dtype=u.dtype)
        ddelta = torch.empty(batch, channels, length, device=u.device, dtype=delta.dtype)
        dz = torch.empty(batch, channels, length, device=u.device, dtype=z.dtype) if z is not None else None
        dB32 = torch.zeros(batch, groups, n_state, length, device=u.device, dtype=torch.float32)
        dC32 = torch.zeros_like(dB32)
        dA_part = torch.empty(n_groups, channels, n_state, device=u.device, dtype=torch.float32)
        dD_part = torch.empty(n_groups, channels, device=u.device, dtype=torch.float32)
        ddbias_part = torch.empty_like(dD_part)
        zz = z if z is not None else u
        if batch and channels and length:
            _scan_bwd_kernel[(n_groups, channels // block_d)](
                u, delta, A, Bg, Cg, D if D is not None else A, zz,
                delta_bias if delta_bias is not None else A, hs, dout,
                du, ddelta, dz if dz is not None else du, dB32, dC32, dA_part, dD_part, ddbias_part,
                batch, length, n_state, channels, channels // groups, k, reset_every or 1, n_tiles_max,
                u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
                dout.stride(0), dout.stride(1),
                Bg.stride(0), Bg.stride(1), Bg.stride(2), Cg.stride(0), Cg.stride(1), Cg.stride(2),
                dB32.stride(0), dB32.stride(1), dB32.stride(2),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None,
                SOFTPLUS=softplus, HAS_RESET=reset_every is not None,
                REVERSE_BY_FLIP=not reverse_scan_is_native(u.device, block_d * block_n, block_t),
                BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=block_d * block_n, BLOCK_T=block_t,
                num_warps=num_warps_for(block_d * block_n, block_t),
            )
        else:
            dA_part.zero_(), dD_part.zero_(), ddbias_part.zero_()

        def reduce_bc(g32, like):
            if like.dim() == 2:  # fixed (D, N): sum over batch and time
                return g32.sum(dim=(0, 3)).to(like.dtype)
            return g32.reshape(like.shape).to(like.dtype)

        dA = dA_part.sum(0).to(A.dtype)
        dD = dD_part.sum(0).to(D.dtype) if D is not None else None
        ddbias = ddbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
        return (du, ddelta, dA, reduce_bc(dB32, B), reduce_bc(dC32, C), dD, dz, ddbias,
                None, None, None, None, None, None)


def selective_scan_triton(u, delta, A, B, C, z=None, fold=1, D=None, delta_bias=None, delta_softplus=True,
                          reset_every=None, *, block_t=None, block_d=None):
    """Segmented, logically folded selective scan on Triton (differentiable).

    Args:
        u, delta, z: (batch, channels, L), fp16/bf16/fp32, unit stride along L.
        A: (channels, N). B, C: (batch, N, L), (batch, G, N, L) or fixed (channels, N).
        D, delta_bias: (channels,). delta_softplus: apply softplus(delta + delta_bias).
        reset_every: T; the state restarts at every folded position t with t % T == 0.
        fold: k; rows [p*k, (p+1)*k) of the batch are scanned as one sequence of k*L tokens (the
            last group holds batch % k rows). With reset_every=L the result equals fold=1.
        block_t: time tile (power of 2 >= 16); default from :func:`pick_block_t`.
        block_d: channels per program (power of 2 dividing channels/groups); default from
            :func:`pick_block_d` or ``SF_MAMBA_SCAN_BLOCK_D``. Both are for tests and tuning.
    Returns:
        out: (batch, channels, L) in u.dtype. State and accumulation are fp32.
    """
    validate_triton_inputs(u, delta, A, B, C, D, z, delta_bias, reset_every, fold)
    if block_t is not None and (block_t < 16 or block_t & (block_t - 1)):
        raise ValueError(f"block_t must be a power of 2 >= 16, got {block_t}")
    # hs (the per-tile carries) is only saved when a backward can follow
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reset_every,
                                      fold, block_t, block_d, save)
