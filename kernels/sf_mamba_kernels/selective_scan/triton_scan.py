"""Triton selective scan (Mamba-1) with periodic state reset and *logical* batch folding.

Math (the same as :mod:`.reference`)::

    delta' = softplus(delta + delta_bias)                 (both optional)
    h_t    = a_t * h_{t-1} + delta'_t * B_t * u_t,  a_t = exp(delta'_t * A)   (fp32 state)
    h_t    = delta'_t * B_t * u_t    where t % reset_every == 0              (the reset *replaces* h)
    out_t  = (<C_t, h_t> + D * u_t) * silu(z_t)                              (D, z optional)

Design (docs/kernels.md, "Triton kernel design"): sequential in time, one thread per channel.

- A program owns ``BLOCK_D`` channels of one B/C group (one thread each, 32 per warp) and one
  *fold group* of ``fold`` consecutive batch rows, which it walks as one stream of
  ``rows * length`` tokens. Folding is index arithmetic only (running row/position counters);
  every tensor is read through its own strides, so the model's time-major views are not copied.
- A thread keeps all ``N`` states of its channel in registers: the sum over states needs no
  shuffles, and softplus / loads / stores happen once per (channel, step), not per state.
- Time advances ``CHUNK`` steps per loop iteration: u, delta, z, out move as ``[CHUNK, BLOCK_D]``
  tiles (one channel column per thread), B and C as ``[N, CHUNK]`` tiles that every thread sees
  (shared memory). Step ``k`` of a tile is picked with ``sum(where(idx == k, x, -0.0))`` over an
  in-thread axis, which compiles to a register read (``-0.0`` is the exact additive identity).
- Reset: a running phase counter gives the step of the chunk that starts a segment; there
  ``a = exp2(delta*A*log2(e) - inf) = 0`` *and* the state is replaced by 0 before the update, so
  an Inf/NaN state cannot cross an image boundary (0 * Inf would be NaN).
- The forward saves the state every ``CKPT`` steps when a backward can follow (``hs``). The
  backward walks ``CKPT``-step chunks in reverse: it recomputes the chunk's decays ``a`` once
  (kept in registers) and reuses them for both the state and the adjoint
  ``dh_t = C_t dy_t + a_{t+1} dh_{t+1}`` (no reverse ``associative_scan``, no second exp).
  dB/dC are summed over the program's channels, then one relaxed fp32 atomic per (state, token)
  (order-nondeterministic across channel blocks, like mamba_ssm); dA, dD, d(delta_bias) and fixed
  B/C gradients are written per (fold group, channel) and summed on the host (deterministic).

Importing this module needs triton but no GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_CHUNK = 8  # forward steps per loop iteration
FWD_MAX_REGS = 168  # 12 resident warps per SM (65,536 registers, 256-register granules per warp)
FWD_SAVE_MAX_REGS = 200  # 10 warps per SM with checkpoints (168 spills their stores)
MAX_CKPT = 4  # backward steps per loop iteration (= the forward's checkpoint interval)


@triton.jit
def _neg_zero():
    # -0.0 built from its bits: a literal -0.0 is canonicalised to +0.0, and only x + (-0.0) == x
    # lets a masked sum over an in-thread axis fold into a plain register read.
    return tl.full([1], -2147483648, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _pick(x, idx, k, axis: tl.constexpr):
    return tl.sum(tl.where(idx == k, x, _neg_zero()), axis)


@triton.jit
def _bfly_exchange(lo, hi, lane, OFFSET: tl.constexpr, FAST: tl.constexpr):
    """One reduce-scatter step across lanes ``l`` and ``l ^ OFFSET``: a lane with that bit set keeps
    ``hi`` and adds its partner's ``hi``; the other keeps ``lo`` and adds its partner's ``lo``.
    One SHFL per kept value instead of five (a butterfly all-reduce), and half the values go."""
    upper = (lane & OFFSET) != 0
    keep = tl.where(upper, hi, lo)
    send = tl.where(upper, lo, hi)
    if FAST:
        # the lane mask is an operand (a constant ptxas folds into the SHFL)
        got = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 31, -1;", "=r,r,r",
                                        [send, tl.full(send.shape, OFFSET, tl.int32)],
                                        dtype=tl.float32, is_pure=False, pack=1)
    else:  # the interpreter: the same exchange as a gather along the lane (channel) axis
        got = tl.gather(send, (lane ^ OFFSET) + tl.zeros_like(send).to(tl.int32), 1)
    return keep + got


@triton.jit
def _lane_scatter_index(N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Flattened (state, step) index ``n * CHUNK + t`` that lane ``l`` holds after
    :func:`_lane_reduce_scatter`: ``l * V / 32 + j`` for V = N * CHUNK values (several per lane when
    V > 32; when V < 32, 32 / V lanes hold partial sums of one index and all of them add it)."""
    lane = tl.arange(0, BLOCK_D)[None, :]
    V: tl.constexpr = N * CHUNK
    if V >= BLOCK_D:  # one return: triton 3.6 types every return of a function, even a dead one
        index = lane * (V // BLOCK_D) + tl.arange(0, V // BLOCK_D)[:, None]
    else:
        index = lane // (BLOCK_D // V)
    return index


@triton.jit
def _lane_reduce_scatter(x, N: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, FAST: tl.constexpr):
    """Sum an [N, CHUNK, BLOCK_D] tile over its lanes (channels), leaving the sums spread one per lane
    (``_lane_scatter_index`` says which): log2(32) exchange rounds that halve the values each time,
    ~4 instructions per value instead of the 10 of a per-value shuffle tree. Needs BLOCK_D == 32
    lanes of one warp holding one channel each (the kernels' layout)."""
    V: tl.constexpr = N * CHUNK
    y = tl.reshape(x, [V, BLOCK_D])
    lane = tl.arange(0, BLOCK_D)[None, :]
    for level in tl.static_range(5):
        if (V >> level) > 1:
            y3 = tl.reshape(y, [2, V >> (level + 1), BLOCK_D])
            i0 = tl.arange(0, 2)[:, None, None]
            lo = tl.sum(tl.where(i0 == 0, y3, _neg_zero()), 0)
            hi = tl.sum(tl.where(i0 == 1, y3, _neg_zero()), 0)
            y = _bfly_exchange(lo, hi, lane, 16 >> level, FAST)
    return y


@triton.jit
def _log2(x, FAST: tl.constexpr):
    if FAST:  # one MUFU.LG2 (rel. error ~2^-22) instead of libdevice's ~15-instruction polynomial
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    return tl.math.log2(x)  # the interpreter has no inline asm


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    # threshold 20 like mamba_ssm / torch; log(1 + e^x) through exp2/log2 (the MUFU ops)
    return tl.where(x <= 20.0, _log2(1.0 + tl.exp2(tl.minimum(x, 20.0) * 1.4426950408889634), FAST)
                    * 0.6931471805599453, x)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp2(-x * 1.4426950408889634))


@triton.jit
def _time_offsets(row, pos, length, s_b, s_l, kk):
    """Offsets of steps ``kk`` from (row, pos): a chunk crosses at most one row end (CHUNK <= L).

    The index type follows the strides (int32 when the host found every offset < 2^31)."""
    return row * s_b + pos * s_l + kk * s_l + tl.where(pos + kk >= length, s_b - length * s_l, 0)


@triton.jit
def _opaque(x, FAST: tl.constexpr):
    """``x`` through an inline-asm move LLVM cannot see through (int32 offsets it would otherwise
    re-fold into a multiply per use, or hoist into one 64-bit pointer per state)."""
    if FAST:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=x.dtype, is_pure=True, pack=1)
    return x


@triton.jit
def _fwd_offsets(tok, row, pos, length, s_b, s_l, kk, FLAT: tl.constexpr, FAST: tl.constexpr):
    """Forward time offsets; FLAT (s_b == length * s_l: rows back to back, the model's views) needs no
    row-end test: step k of the stream is token ``tok + k`` (tok = row * length + pos)."""
    if FLAT:
        # opaque: LLVM would fold tok * s_l + kk * s_l back to (tok + kk) * s_l, a multiply per step
        return tok * s_l + _opaque(kk * s_l, FAST)
    return _time_offsets(row, pos, length, s_b, s_l, kk)


@triton.jit
def _fwd_ptrs(base, tok, row, pos, length, s_b, s_l, kk, FLAT: tl.constexpr, FAST: tl.constexpr):
    """[CHUNK, BLOCK_D] pointers of a (batch, channels, L) tensor (base: [1, BLOCK_D])."""
    if FLAT:  # the chunk's pointer, then the step offsets (opaque: LLVM would re-fold them per step)
        return (base + tok * s_l) + _opaque(kk * s_l, FAST)[:, None]
    return base + _time_offsets(row, pos, length, s_b, s_l, kk)[:, None]


@triton.jit
def _to_f32_here(x, FAST: tl.constexpr):
    """fp32 of a 16-bit tile through an opaque cvt, so the layout pass cannot move the conversion
    after the shared-memory broadcast (triton 3.6 did: N x CHUNK converts per thread, not 2)."""
    if FAST and x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("cvt.f32.bf16 $0, $1;", "=r,h", [x], dtype=tl.float32, is_pure=False,
                                         pack=1)
    if FAST and x.dtype == tl.float16:
        return tl.inline_asm_elementwise("cvt.f32.f16 $0, $1;", "=r,h", [x], dtype=tl.float32, is_pure=False,
                                         pack=1)
    return x.to(tl.float32)


@triton.jit
def _load_state_tile(ptrs, s_n, offs_n, mask_d, n_state, N: tl.constexpr):
    """An (N, BLOCK_D) fp32 tile from N one-dimensional channel loads: a 1-D load has one channel per
    lane whatever the strides, so no triton version can pick a states-across-lanes layout for it."""
    tile = tl.zeros([N, ptrs.shape[0]], dtype=tl.float32)
    for n in tl.static_range(N):
        row = tl.load(ptrs + n * s_n, mask=mask_d & (n < n_state), other=0.0).to(tl.float32)
        tile = tl.where(offs_n[:, None] == n, row[None, :], tile)
    return tile


@triton.jit
def _chunk_mask(valid_t, mask_d, MASKED: tl.constexpr):
    if MASKED:
        return valid_t[:, None] & mask_d[None, :]
    return (valid_t[:, None] == valid_t[:, None]) & mask_d[None, :]


@triton.jit
def _ld(ptrs, mask, USE_MASK: tl.constexpr):
    """fp32 load of a [CHUNK, BLOCK_D] tile; unmasked in the steady state (full chunk, whole channel block)."""
    if USE_MASK:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return tl.load(ptrs).to(tl.float32)


@triton.jit
def _st(ptrs, value, mask, USE_MASK: tl.constexpr):
    if USE_MASK:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty))


@triton.jit
def _ld_raw(ptrs, mask, USE_MASK: tl.constexpr):
    """A [CHUNK, BLOCK_D] tile in its storage dtype: converted where it is used, so a prefetched load
    is not waited for in the iteration that issues it."""
    if USE_MASK:
        return tl.load(ptrs, mask=mask, other=0.0)
    return tl.load(ptrs)


@triton.jit
def _bc_raw(base, tok, row, pos, length, s_b, s_l, kk, mask_n, valid_t, MASKED: tl.constexpr,
            FLAT: tl.constexpr, FAST: tl.constexpr, EVEN_N: tl.constexpr):
    """B or C for the chunk as an [N, CHUNK] tile in its storage dtype (``base``: the [N, 1] state pointers)."""
    ptrs = base + _fwd_offsets(tok, row, pos, length, s_b, s_l, kk, FLAT, FAST)[None, :]
    if EVEN_N and not MASKED:  # n_state == N: no predicate, no zeroing of the masked lanes
        return tl.load(ptrs)
    if MASKED:
        return tl.load(ptrs, mask=mask_n[:, None] & valid_t[None, :], other=0.0)
    return tl.load(ptrs, mask=mask_n[:, None], other=0.0)


@triton.jit
def _load_bc_tile(base, row, pos, length, s_b, s_l, kk, mask_n, valid_t, MASKED: tl.constexpr):
    """The backward's B or C tile, fp32 (row-end tests, state masks: no forward specialisation)."""
    return _bc_raw(base, 0, row, pos, length, s_b, s_l, kk, mask_n, valid_t, MASKED, False, False,
                   False).to(tl.float32)


@triton.jit
def _fwd_load(j0, tok, row, pos, total, length, mask_d, mask_n, u_base, dt_base, z_base, B_base, C_base,
              su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sC_b, sC_l,
              CHUNK: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr, HAS_Z: tl.constexpr,
              B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, FAST: tl.constexpr, FLAT: tl.constexpr,
              EVEN_N: tl.constexpr):
    """The chunk's input tiles, unconverted: (B [N, CHUNK], C, u [CHUNK, BLOCK_D], delta, z); an absent
    operand is a stand-in (u) that is never read."""
    kk = tl.arange(0, CHUNK)
    valid_t = (j0 + kk) < total
    m2 = _chunk_mask(valid_t, mask_d, MASKED)
    USE_MASK: tl.constexpr = MASKED or not EVEN_D
    # B/C first: triton's layout propagation lets the *later* loads (u, delta: one channel per lane)
    # win conflicts, so the state stays one-channel-per-thread and only the B/C tiles move
    if not B_FIXED:
        Bc = _bc_raw(B_base, tok, row, pos, length, sB_b, sB_l, kk, mask_n, valid_t, MASKED, FLAT, FAST, EVEN_N)
    if not C_FIXED:
        Cc = _bc_raw(C_base, tok, row, pos, length, sC_b, sC_l, kk, mask_n, valid_t, MASKED, FLAT, FAST, EVEN_N)
    u = _ld_raw(_fwd_ptrs(u_base, tok, row, pos, length, su_b, su_l, kk, FLAT, FAST), m2, USE_MASK)
    dt = _ld_raw(_fwd_ptrs(dt_base, tok, row, pos, length, sdt_b, sdt_l, kk, FLAT, FAST), m2, USE_MASK)
    zt = u
    if HAS_Z:
        zt = _ld_raw(_fwd_ptrs(z_base, tok, row, pos, length, sz_b, sz_l, kk, FLAT, FAST), m2, USE_MASK)
    if B_FIXED:
        Bc = u
    if C_FIXED:
        Cc = u
    return Bc, Cc, u, dt, zt


@triton.jit
def _fwd_compute(h, Bc, Cc, u, dt, zt, j0, tok, row, pos, dist, total, length, mask_d, mask_n, A2, d_skip, bias,
                 B_fix, C_fix, out_base, hs_tile, hs_step, hs_n, last_tile, so_b, so_l, sl_b,
                 N: tl.constexpr, MASKED: tl.constexpr, CHUNK: tl.constexpr, CKPT: tl.constexpr,
                 EVEN_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr,
                 SAVE_HS: tl.constexpr, SAVE_LAST: tl.constexpr, FAST: tl.constexpr, FLAT: tl.constexpr,
                 EVEN_N: tl.constexpr):
    """One chunk's recurrence and output from tiles :func:`_fwd_load` returned."""
    kk = tl.arange(0, CHUNK)
    valid_t = (j0 + kk) < total
    m2 = _chunk_mask(valid_t, mask_d, MASKED)
    USE_MASK: tl.constexpr = MASKED or not EVEN_D
    if not B_FIXED:
        Bc = _to_f32_here(Bc, FAST)
    if not C_FIXED:
        Cc = _to_f32_here(Cc, FAST)
    u = u.to(tl.float32)  # [CHUNK, BLOCK_D]: one channel column per thread
    dt = dt.to(tl.float32)
    if HAS_DBIAS:
        dt = dt + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(dt, FAST)
    if MASKED:
        dt = tl.where(valid_t[:, None], dt, 0.0)  # identity steps past the end keep the state
    dtu = dt * u
    kk3 = kk[None, :, None]
    if B_FIXED:
        x3 = dtu[None, :, :] * B_fix[:, None, :]
    else:
        # [N, CHUNK, BLOCK_D]: the product with the per-channel tile moves B into shared memory once
        # per chunk (every thread reads all of it); picking step k is then a register read
        x3 = dtu[None, :, :] * Bc[:, :, None]
    # C in the same layout: `where(always true, C, x3)` folds away after lowering, but makes the
    # compiler move C like B (one shared-memory pass per chunk), so y is a plain FMA chain below
    if C_FIXED:
        C3 = tl.where(kk3 >= 0, C_fix[:, None, :], x3)
    else:
        C3 = tl.where(kk3 >= 0, Cc[:, :, None], x3)
    h_all = tl.zeros_like(x3)
    for k in tl.static_range(CHUNK):
        if SAVE_HS:
            if k % CKPT == 0:  # the state entering step j0 + k, for the backward's recompute
                ck = (j0 + k) // CKPT
                # hs_tile: one pointer per lane; the state offsets are opaque, so they stay uniform
                # registers instead of N hoisted 64-bit pointers (the register cap spilled those)
                no = _opaque(tl.arange(0, N) * hs_n, FAST)
                if MASKED or not EVEN_D or not EVEN_N:
                    tl.store((hs_tile + ck * hs_step) + no[:, None], h,
                             mask=mask_n[:, None] & mask_d[None, :] & (j0 + k < total))
                else:  # a full chunk of a full block
                    tl.store((hs_tile + ck * hs_step) + no[:, None], h)
        dt_k = _pick(dt, kk[:, None], k, 0)  # [BLOCK_D], a register read
        if HAS_RESET:
            # a segment starts here: a = 0 and the state is *replaced* (0 * Inf would be NaN)
            a = tl.exp2(dt_k[None, :] * A2 + tl.where(dist == k, float("-inf"), 0.0))
            h = tl.where(dist == k, 0.0, h)
        else:
            a = tl.exp2(dt_k[None, :] * A2)
        h = a * h + _pick(x3, kk3, k, 1)
        h_all = tl.where(kk3 == k, h[:, None, :], h_all)
        if SAVE_LAST:
            is_last = (pos + k == length - 1) & (j0 + k < total)
            tl.store(last_tile + row.to(tl.int64) * sl_b, h, mask=mask_n[:, None] & mask_d[None, :] & is_last)
    if HAS_D:
        y = d_skip[None, :] * u
    else:
        y = tl.zeros_like(u)
    nn3 = tl.arange(0, N)[:, None, None]
    for n in tl.static_range(N):  # y = D u + sum_n C h, one FMA chain per (channel, step)
        y = tl.fma(_pick(h_all, nn3, n, 0), _pick(C3, nn3, n, 0), y)  # [CHUNK, BLOCK_D]
    if HAS_Z:
        zt = zt.to(tl.float32)
        y = y * zt * _sigmoid(zt)
    _st(_fwd_ptrs(out_base, tok, row, pos, length, so_b, so_l, kk, FLAT, FAST), y, m2, USE_MASK)
    return h


@triton.jit
def _fwd_chunk(h, j0, tok, row, pos, dist, total, length, mask_d, mask_n, A2, d_skip, bias, B_fix, C_fix,
               u_base, dt_base, z_base, out_base, B_base, C_base, hs_tile, hs_step, hs_n, last_tile,
               su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, so_b, so_l, sB_b, sB_l, sC_b, sC_l, sl_b,
               N: tl.constexpr, MASKED: tl.constexpr, CHUNK: tl.constexpr, CKPT: tl.constexpr,
               EVEN_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr,
               SOFTPLUS: tl.constexpr, HAS_RESET: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr,
               SAVE_HS: tl.constexpr, SAVE_LAST: tl.constexpr, FAST: tl.constexpr, FLAT: tl.constexpr,
               EVEN_N: tl.constexpr):
    """Load, then compute, one chunk (the ragged tail, and every chunk when nothing is prefetched)."""
    Bc, Cc, u, dt, zt = _fwd_load(j0, tok, row, pos, total, length, mask_d, mask_n, u_base, dt_base, z_base,
                                  B_base, C_base, su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sC_b, sC_l,
                                  CHUNK, MASKED, EVEN_D, HAS_Z, B_FIXED, C_FIXED, FAST, FLAT, EVEN_N)
    return _fwd_compute(h, Bc, Cc, u, dt, zt, j0, tok, row, pos, dist, total, length, mask_d, mask_n, A2, d_skip,
                        bias, B_fix, C_fix, out_base, hs_tile, hs_step, hs_n, last_tile, so_b, so_l, sl_b,
                        N, MASKED, CHUNK, CKPT, EVEN_D, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_RESET, B_FIXED,
                        C_FIXED, SAVE_HS, SAVE_LAST, FAST, FLAT, EVEN_N)


# Every shape/stride int stays a runtime value: no recompile per batch size or stride pattern, and a
# unit stride does not make Triton re-lay the tiles out along time (the design wants channels on lanes).
_FWD_INTS = ["batch", "length", "n_state", "n_channels", "cpg", "n_dblocks", "fold", "reset_every", "n_ckpt",
             "su_b", "su_d", "su_l", "sdt_b", "sdt_d", "sdt_l", "sz_b", "sz_d", "sz_l", "so_b", "so_d", "so_l",
             "sA_d", "sA_n", "sB_b", "sB_g", "sB_n", "sB_l", "sC_b", "sC_g", "sC_n", "sC_l", "sl_b", "sl_d"]


@triton.jit(do_not_specialize=_FWD_INTS)
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dbias_ptr, z_ptr, out_ptr, hs_ptr, last_ptr,
    batch, length, n_state, n_channels, cpg, n_dblocks, fold, reset_every, n_ckpt,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
    sA_d, sA_n, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sl_b, sl_d,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, CKPT: tl.constexpr, EVEN_D: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, SAVE_HS: tl.constexpr,
    SAVE_LAST: tl.constexpr, FAST: tl.constexpr, OFF64: tl.constexpr, SAME_TIME_STRIDES: tl.constexpr,
    CHANNEL_UNIT: tl.constexpr = 0, FLAT: tl.constexpr = False, EVEN_N: tl.constexpr = False,
    PREFETCH: tl.constexpr = False,
):
    # CHANNEL_UNIT bit i: tensor i of (u, delta, z, out) has channel stride 1 (the model's time-major
    # views). A known unit stride makes every triton version lay the tile out one channel per lane
    # (3.6 breaks the tie of two unknown strides the other way: states across lanes, shuffles, spills).
    if CHANNEL_UNIT & 1:
        su_d = 1
    if CHANNEL_UNIT & 2:
        sdt_d = 1
    if CHANNEL_UNIT & 4:
        sz_d = 1
    if CHANNEL_UNIT & 8:
        so_d = 1
    if SAME_TIME_STRIDES:  # u, delta, z, out (and B, C) share (batch, time) strides: one index computation
        sdt_b = su_b
        sdt_l = su_l
        sz_b = su_b
        sz_l = su_l
        so_b = su_b
        so_l = su_l
        sC_b = sB_b
        sC_l = sB_l
    if OFF64:  # some offset may pass 2^31: index math in int64
        su_b = su_b.to(tl.int64)
        sdt_b = sdt_b.to(tl.int64)
        sz_b = sz_b.to(tl.int64)
        so_b = so_b.to(tl.int64)
        sB_b = sB_b.to(tl.int64)
        sC_b = sC_b.to(tl.int64)
        sl_b = sl_b.to(tl.int64)
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    g = pid_c // n_dblocks
    d_local = (pid_c - g * n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_local < cpg
    chan = (g * cpg + d_local).to(tl.int64)
    offs_n = tl.arange(0, N)
    mask_n = offs_n < n_state
    row0 = pid_r * fold
    total = tl.minimum(fold, batch - row0) * length

    A2 = _load_state_tile(A_ptr + chan * sA_d, sA_n, offs_n, mask_d, n_state, N) * 1.4426950408889634
    # placeholders for the operands a flag switches off (never read then)
    d_skip = A2
    bias = A2
    B_fix = A2
    C_fix = A2
    B_base = A2
    C_base = A2
    hs_tile = A2
    last_tile = A2
    if HAS_D:
        d_skip = tl.load(D_ptr + chan, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DBIAS:
        bias = tl.load(dbias_ptr + chan, mask=mask_d, other=0.0).to(tl.float32)
    if B_FIXED:  # (D, N): sB_b is the channel stride
        B_fix = tl.load(B_ptr + chan[None, :] * sB_b + offs_n[:, None] * sB_n,
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    else:
        B_base = (B_ptr + g.to(tl.int64) * sB_g + offs_n.to(tl.int64) * sB_n)[:, None]
    if C_FIXED:
        C_fix = tl.load(C_ptr + chan[None, :] * sC_b + offs_n[:, None] * sC_n,
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    else:
        C_base = (C_ptr + g.to(tl.int64) * sC_g + offs_n.to(tl.int64) * sC_n)[:, None]
    if SAVE_HS:  # hs: (fold groups, n_ckpt, N, channels) fp32: channels on lanes, coalesced
        hs_tile = hs_ptr + (pid_r.to(tl.int64) * n_ckpt * N * n_channels + chan)[None, :]
    if SAVE_LAST:  # last: (batch, channels, N) fp32
        last_tile = last_ptr + (chan * sl_d)[None, :] + offs_n[:, None]
    u_base = (u_ptr + chan * su_d)[None, :]
    dt_base = (dt_ptr + chan * sdt_d)[None, :]
    z_base = (z_ptr + chan * sz_d)[None, :]
    out_base = (out_ptr + chan * so_d)[None, :]

    h = tl.zeros([N, BLOCK_D], dtype=tl.float32)
    row = row0
    pos = 0
    tok = row0 * length  # FLAT: the token index of step j0
    if OFF64:
        tok = tok.to(tl.int64)
    phase = 0  # position inside the current reset segment
    n_full = total // CHUNK
    if PREFETCH:  # chunk 0's tiles (masked: there may be no full chunk)
        nB, nC, nu, ndt, nz = _fwd_load(0, tok, row, pos, total, length, mask_d, mask_n, u_base, dt_base, z_base,
                                        B_base, C_base, su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sC_b, sC_l,
                                        CHUNK, True, EVEN_D, HAS_Z, B_FIXED, C_FIXED, FAST, FLAT, EVEN_N)
    for i in range(n_full):
        dist = tl.where(phase == 0, 0, reset_every - phase)  # steps until the next segment start
        if PREFETCH:
            # chunk i+1's loads are issued before chunk i's arithmetic: with one warp per program
            # nothing else hides their latency. The last iteration reloads its own chunk (in bounds,
            # unused): cheaper than peeling it off the loop.
            more = i + 1 < n_full
            pos_n = pos + CHUNK
            wrap_n = pos_n >= length
            pos_n = tl.where(more, tl.where(wrap_n, pos_n - length, pos_n), pos)
            row_n = tl.where(more, row + wrap_n.to(tl.int32), row)
            cB, cC, cu, cdt, cz = nB, nC, nu, ndt, nz
            nB, nC, nu, ndt, nz = _fwd_load(i * CHUNK, tok + tl.where(more, i + 1, i) * CHUNK, row_n, pos_n, total,
                                            length, mask_d, mask_n, u_base, dt_base, z_base, B_base, C_base, su_b,
                                            su_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sC_b, sC_l, CHUNK, False,
                                            EVEN_D, HAS_Z, B_FIXED, C_FIXED, FAST, FLAT, EVEN_N)
            h = _fwd_compute(h, cB, cC, cu, cdt, cz, i * CHUNK, tok + i * CHUNK, row, pos, dist, total, length,
                             mask_d, mask_n, A2, d_skip, bias, B_fix, C_fix, out_base, hs_tile, N * n_channels,
                             n_channels, last_tile, so_b, so_l, sl_b,
                             N, False, CHUNK, CKPT, EVEN_D, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_RESET,
                             B_FIXED, C_FIXED, SAVE_HS, SAVE_LAST, FAST, FLAT, EVEN_N)
        else:
            h = _fwd_chunk(h, i * CHUNK, tok + i * CHUNK, row, pos, dist, total, length, mask_d, mask_n, A2, d_skip,
                           bias, B_fix, C_fix, u_base, dt_base, z_base, out_base, B_base, C_base, hs_tile,
                           N * n_channels, n_channels, last_tile,
                           su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, so_b, so_l, sB_b, sB_l, sC_b, sC_l, sl_b,
                           N, False, CHUNK, CKPT, EVEN_D, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_RESET,
                           B_FIXED, C_FIXED, SAVE_HS, SAVE_LAST, FAST, FLAT, EVEN_N)
        pos += CHUNK
        wrap = pos >= length
        pos = tl.where(wrap, pos - length, pos)
        row += wrap.to(tl.int32)
        if HAS_RESET:
            phase += CHUNK
            phase = tl.where(phase >= reset_every, phase - reset_every, phase)
    if n_full * CHUNK < total:
        dist = tl.where(phase == 0, 0, reset_every - phase)
        h = _fwd_chunk(h, n_full * CHUNK, tok + n_full * CHUNK, row, pos, dist, total, length, mask_d, mask_n, A2, d_skip, bias, B_fix,
                       C_fix, u_base, dt_base, z_base, out_base, B_base, C_base, hs_tile, N * n_channels, n_channels, last_tile,
                       su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, so_b, so_l, sB_b, sB_l, sC_b, sC_l, sl_b,
                       N, True, CHUNK, CKPT, EVEN_D, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_RESET,
                       B_FIXED, C_FIXED, SAVE_HS, SAVE_LAST, FAST, FLAT, EVEN_N)


@triton.jit
def _bwd_chunk(carry, dA_acc, dBf_acc, dCf_acc, dD_acc, dbias_acc,
               j0, row, pos, dist, total, length, mask_d, mask_n, A_nat, A2, d_skip, bias, B_fix, C_fix,
               u_base, dt_base, z_base, dout_base, du_base, ddt_base, dz_base, B_base, C_base, dB_base, dC_base,
               hs_tile, hs_step,
               su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sdo_b, sdo_l, sdu_b, sdu_l, sddt_b, sddt_l, sdz_b, sdz_l,
               sB_b, sB_l, sC_b, sC_l, sdB_b, sdB_l,
               N: tl.constexpr, MASKED: tl.constexpr, CHUNK: tl.constexpr, EVEN_D: tl.constexpr,
               HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
               HAS_RESET: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, FAST: tl.constexpr,
               n_state, BLOCK_D: tl.constexpr, LANE_REDUCE: tl.constexpr):
    kk = tl.arange(0, CHUNK)
    kk3 = kk[None, :, None]
    valid_t = (j0 + kk) < total
    m2 = _chunk_mask(valid_t, mask_d, MASKED)
    USE_MASK: tl.constexpr = MASKED or not EVEN_D
    # B/C loads first, so the per-channel tiles' layout wins (see _fwd_chunk)
    if not B_FIXED:
        Bc = _load_bc_tile(B_base, row, pos, length, sB_b, sB_l, kk, mask_n, valid_t, MASKED)
    if not C_FIXED:
        Cc = _load_bc_tile(C_base, row, pos, length, sC_b, sC_l, kk, mask_n, valid_t, MASKED)
    u = _ld(u_base + _time_offsets(row, pos, length, su_b, su_l, kk)[:, None], m2, USE_MASK)
    u = u.to(tl.float32)
    dt_raw = _ld(dt_base + _time_offsets(row, pos, length, sdt_b, sdt_l, kk)[:, None], m2, USE_MASK)
    dt_raw = dt_raw.to(tl.float32)
    if HAS_DBIAS:
        dt_raw = dt_raw + bias[None, :]
    dt = dt_raw
    if SOFTPLUS:
        dt = _softplus(dt_raw, FAST)
    if MASKED:
        dt = tl.where(valid_t[:, None], dt, 0.0)
    dtu = dt * u
    dout = _ld(dout_base + _time_offsets(row, pos, length, sdo_b, sdo_l, kk)[:, None], m2, USE_MASK)
    dout = dout.to(tl.float32)
    dy = dout
    if HAS_Z:
        zt = _ld(z_base + _time_offsets(row, pos, length, sz_b, sz_l, kk)[:, None], m2, USE_MASK)
        zt = zt.to(tl.float32)
        sig = _sigmoid(zt)
        dy = dout * zt * sig

    # Chunk-wide [N, CHUNK, BLOCK_D] tiles: products with a per-channel tile move B and C into shared
    # memory once per chunk, and only the two recurrences below run step by step (register picks).
    dt3 = dt[None, :, :]
    if HAS_RESET:  # a = exp2(-inf) = 0 where a segment starts
        a3 = tl.exp2(dt3 * A2[:, None, :] + tl.where(kk3 == dist, float("-inf"), 0.0))
    else:
        a3 = tl.exp2(dt3 * A2[:, None, :])  # the chunk's decays: computed once, used by both sweeps
    if B_FIXED:
        x3 = dtu[None, :, :] * B_fix[:, None, :]
    else:
        x3 = dtu[None, :, :] * Bc[:, :, None]
    if C_FIXED:
        g3 = dy[None, :, :] * C_fix[:, None, :]
    else:
        g3 = dy[None, :, :] * Cc[:, :, None]

    # 1) recompute the states from the checkpoint
    h = tl.load(hs_tile + (j0 // CHUNK) * hs_step, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    h_all = tl.zeros_like(a3)
    for k in tl.static_range(CHUNK):
        if HAS_RESET:  # the reset replaces the state (0 * Inf would be NaN)
            h = tl.where(dist == k, 0.0, h)
        h = _pick(a3, kk3, k, 1) * h + _pick(x3, kk3, k, 1)
        h_all = tl.where(kk3 == k, h[:, None, :], h_all)
    ah3 = h_all - x3  # a_t h_{t-1}: no division, exactly 0 at a reset

    # 2) adjoint sweep, latest step first: dh_t = C_t dy_t + a_{t+1} dh_{t+1}
    dh = carry
    dh_all = tl.zeros_like(a3)
    for kr in tl.static_range(CHUNK):
        k = CHUNK - 1 - kr
        if k < CHUNK - 1:
            flow = _pick(a3, kk3, k + 1, 1) * dh
            if HAS_RESET:  # step k + 1 starts a segment: nothing flows back across it
                flow = tl.where(dist == k + 1, 0.0, flow)
            dh = flow + _pick(g3, kk3, k, 1)
        else:
            dh = dh + _pick(g3, kk3, k, 1)
        dh_all = tl.where(kk3 == k, dh[:, None, :], dh_all)
    carry = _pick(a3, kk3, 0, 1) * dh
    if HAS_RESET:
        carry = tl.where(dist == 0, 0.0, carry)

    # 3) local gradients, chunk-wide; dB/dC first, so their tiles die early (the backward sits at the
    # register cap). dB/dC: summed over this program's channels, then relaxed fp32 atomics.
    if LANE_REDUCE:  # the sums end one per lane: one atomic instruction for all of them
        v = _lane_scatter_index(N, CHUNK, BLOCK_D)
        t_v = v % CHUNK
        t_dB = _time_offsets(row, pos, length, sdB_b, sdB_l, t_v)
        ok_v = (v // CHUNK < n_state) & (j0 + t_v < total)
    else:
        t_dB = _time_offsets(row, pos, length, sdB_b, sdB_l, kk)[None, :]
        ok_v = mask_n[:, None] & valid_t[None, :]
    if C_FIXED:
        dCf_acc += tl.sum(h_all * dy[None, :, :], 1)
    elif LANE_REDUCE:
        tl.atomic_add(dC_base + t_dB, _lane_reduce_scatter(h_all * dy[None, :, :], N, CHUNK, BLOCK_D, FAST),
                      mask=ok_v, sem="relaxed")
    else:
        tl.atomic_add(dC_base + t_dB, tl.sum(h_all * dy[None, :, :], 2), mask=ok_v, sem="relaxed")
    if B_FIXED:
        dBf_acc += tl.sum(dh_all * dtu[None, :, :], 1)
    elif LANE_REDUCE:
        tl.atomic_add(dB_base + t_dB, _lane_reduce_scatter(dh_all * dtu[None, :, :], N, CHUNK, BLOCK_D, FAST),
                      mask=ok_v, sem="relaxed")
    else:
        tl.atomic_add(dB_base + t_dB, tl.sum(dh_all * dtu[None, :, :], 2), mask=ok_v, sem="relaxed")
    dhah = dh_all * ah3
    dA_acc += tl.sum(dhah * dt3, 1)
    s_A = tl.sum(dhah * A_nat[:, None, :], 0)  # [CHUNK, BLOCK_D]
    if B_FIXED:
        s_B = tl.sum(dh_all * B_fix[:, None, :], 0)
    else:
        s_B = tl.sum(dh_all * Bc[:, :, None], 0)
    if HAS_Z:
        if C_FIXED:
            y_pre = tl.sum(h_all * C_fix[:, None, :], 0)
        else:
            y_pre = tl.sum(h_all * Cc[:, :, None], 0)
        if HAS_D:
            y_pre = y_pre + d_skip[None, :] * u
        dz = dout * y_pre * sig * (1.0 + zt * (1.0 - sig))
        _st(dz_base + _time_offsets(row, pos, length, sdz_b, sdz_l, kk)[:, None], dz, m2, USE_MASK)
    du = dt * s_B
    if HAS_D:
        du += d_skip[None, :] * dy
    ddt = u * s_B + s_A
    if SOFTPLUS:
        ddt = ddt * tl.where(dt_raw <= 20.0, _sigmoid(dt_raw), 1.0)
    if MASKED:
        ddt = tl.where(valid_t[:, None], ddt, 0.0)
    _st(du_base + _time_offsets(row, pos, length, sdu_b, sdu_l, kk)[:, None], du, m2, USE_MASK)
    _st(ddt_base + _time_offsets(row, pos, length, sddt_b, sddt_l, kk)[:, None], ddt, m2, USE_MASK)
    dbias_acc += ddt
    dD_acc += dy * u
    return carry, dA_acc, dBf_acc, dCf_acc, dD_acc, dbias_acc


_BWD_INTS = ["batch", "length", "n_state", "n_channels", "cpg", "n_dblocks", "fold", "reset_every", "n_ckpt",
             "su_b", "su_d", "su_l", "sdt_b", "sdt_d", "sdt_l", "sz_b", "sz_d", "sz_l", "sdo_b", "sdo_d", "sdo_l",
             "sdu_b", "sdu_d", "sdu_l", "sddt_b", "sddt_d", "sddt_l", "sdz_b", "sdz_d", "sdz_l",
             "sA_d", "sA_n", "sB_b", "sB_g", "sB_n", "sB_l", "sC_b", "sC_g", "sC_n", "sC_l",
             "sdB_b", "sdB_g", "sdB_n", "sdB_l"]


@triton.jit(do_not_specialize=_BWD_INTS)
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dbias_ptr, z_ptr, hs_ptr, dout_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_part, dD_part, ddbias_part, dBf_part, dCf_part,
    batch, length, n_state, n_channels, cpg, n_dblocks, fold, reset_every, n_ckpt,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
    sdu_b, sdu_d, sdu_l, sddt_b, sddt_d, sddt_l, sdz_b, sdz_d, sdz_l,
    sA_d, sA_n, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sdB_b, sdB_g, sdB_n, sdB_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, EVEN_D: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, FAST: tl.constexpr,
    OFF64: tl.constexpr, SAME_TIME_STRIDES: tl.constexpr, CHANNEL_UNIT: tl.constexpr = 0,
    LANE_REDUCE: tl.constexpr = False,
):
    # CHANNEL_UNIT bit i: tensor i of (u, delta, z, dout, du, ddelta, dz) has channel stride 1 (see the forward)
    if CHANNEL_UNIT & 1:
        su_d = 1
    if CHANNEL_UNIT & 2:
        sdt_d = 1
    if CHANNEL_UNIT & 4:
        sz_d = 1
    if CHANNEL_UNIT & 8:
        sdo_d = 1
    if CHANNEL_UNIT & 16:
        sdu_d = 1
    if CHANNEL_UNIT & 32:
        sddt_d = 1
    if CHANNEL_UNIT & 64:
        sdz_d = 1
    # dB/dC (variable): fp32 (batch, G, N, L) buffers with strides sdB_*; the *_part outputs are
    # (fold groups, channels[, N]) fp32, summed over fold groups on the host.
    if SAME_TIME_STRIDES:  # the (batch, time) tensors share strides: one index computation
        sdt_b = su_b
        sdt_l = su_l
        sz_b = su_b
        sz_l = su_l
        sdo_b = su_b
        sdo_l = su_l
        sdu_b = su_b
        sdu_l = su_l
        sddt_b = su_b
        sddt_l = su_l
        sdz_b = su_b
        sdz_l = su_l
        sC_b = sB_b
        sC_l = sB_l
    if OFF64:  # some offset may pass 2^31: index math in int64
        su_b = su_b.to(tl.int64)
        sdt_b = sdt_b.to(tl.int64)
        sz_b = sz_b.to(tl.int64)
        sdo_b = sdo_b.to(tl.int64)
        sdu_b = sdu_b.to(tl.int64)
        sddt_b = sddt_b.to(tl.int64)
        sdz_b = sdz_b.to(tl.int64)
        sB_b = sB_b.to(tl.int64)
        sC_b = sC_b.to(tl.int64)
        sdB_b = sdB_b.to(tl.int64)
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    g = pid_c // n_dblocks
    d_local = (pid_c - g * n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_local < cpg
    chan = (g * cpg + d_local).to(tl.int64)
    offs_n = tl.arange(0, N)
    mask_n = offs_n < n_state
    mask_nd = mask_n[:, None] & mask_d[None, :]
    row0 = pid_r * fold
    total = tl.minimum(fold, batch - row0) * length

    A_nat = _load_state_tile(A_ptr + chan * sA_d, sA_n, offs_n, mask_d, n_state, N)
    A2 = A_nat * 1.4426950408889634
    d_skip = A2
    bias = A2
    B_fix = A2
    C_fix = A2
    B_base = A2
    C_base = A2
    dB_base = A2
    dC_base = A2
    if HAS_D:
        d_skip = tl.load(D_ptr + chan, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DBIAS:
        bias = tl.load(dbias_ptr + chan, mask=mask_d, other=0.0).to(tl.float32)
    if LANE_REDUCE:  # the (state, step) sums a lane ends up holding (_lane_scatter_index)
        dB_off = g.to(tl.int64) * sdB_g + (_lane_scatter_index(N, CHUNK, BLOCK_D) // CHUNK).to(tl.int64) * sdB_n
    else:
        dB_off = (g.to(tl.int64) * sdB_g + offs_n.to(tl.int64) * sdB_n)[:, None]
    if B_FIXED:
        B_fix = tl.load(B_ptr + chan[None, :] * sB_b + offs_n[:, None] * sB_n, mask=mask_nd, other=0.0).to(tl.float32)
    else:
        B_base = (B_ptr + g.to(tl.int64) * sB_g + offs_n.to(tl.int64) * sB_n)[:, None]
        dB_base = dB_ptr + dB_off
    if C_FIXED:
        C_fix = tl.load(C_ptr + chan[None, :] * sC_b + offs_n[:, None] * sC_n, mask=mask_nd, other=0.0).to(tl.float32)
    else:
        C_base = (C_ptr + g.to(tl.int64) * sC_g + offs_n.to(tl.int64) * sC_n)[:, None]
        dC_base = dC_ptr + dB_off
    hs_tile = hs_ptr + (pid_r.to(tl.int64) * n_ckpt * N * n_channels + chan)[None, :] + (offs_n * n_channels)[:, None]
    u_base = (u_ptr + chan * su_d)[None, :]
    dt_base = (dt_ptr + chan * sdt_d)[None, :]
    z_base = (z_ptr + chan * sz_d)[None, :]
    dout_base = (dout_ptr + chan * sdo_d)[None, :]
    du_base = (du_ptr + chan * sdu_d)[None, :]
    ddt_base = (ddt_ptr + chan * sddt_d)[None, :]
    dz_base = (dz_ptr + chan * sdz_d)[None, :]

    carry = tl.zeros([N, BLOCK_D], dtype=tl.float32)  # a_{t+1} dh_{t+1} flowing into the chunk's last step
    dA_acc = tl.zeros([N, BLOCK_D], dtype=tl.float32)
    dBf_acc = tl.zeros([N, BLOCK_D], dtype=tl.float32)
    dCf_acc = tl.zeros([N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)

    n_full = total // CHUNK
    j0 = n_full * CHUNK
    rel = j0 // length
    row = row0 + rel
    pos = j0 - rel * length
    phase = 0
    if HAS_RESET:
        phase = j0 % reset_every
    if j0 < total:  # the ragged last chunk
        dist = tl.where(phase == 0, 0, reset_every - phase)
        carry, dA_acc, dBf_acc, dCf_acc, dD_acc, dbias_acc = _bwd_chunk(
            carry, dA_acc, dBf_acc, dCf_acc, dD_acc, dbias_acc,
            j0, row, pos, dist, total, length, mask_d, mask_n, A_nat, A2, d_skip, bias, B_fix, C_fix,
            u_base, dt_base, z_base, dout_base, du_base, ddt_base, dz_base, B_base, C_base, dB_base, dC_base,
            hs_tile, N * n_channels, su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sdo_b, sdo_l, sdu_b, sdu_l, sddt_b, sddt_l, sdz_b, sdz_l,
            sB_b, sB_l, sC_b, sC_l, sdB_b, sdB_l,
            N, True, CHUNK, EVEN_D, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_RESET, B_FIXED, C_FIXED, FAST,
            n_state, BLOCK_D, LANE_REDUCE)
    for i in range(n_full):
        j0 -= CHUNK
        pos -= CHUNK
        wrap = pos < 0
        pos = tl.where(wrap, pos + length, pos)
        row -= wrap.to(tl.int32)
        if HAS_RESET:
            phase -= CHUNK
            phase = tl.where(phase < 0, phase + reset_every, phase)
        dist = tl.where(phase == 0, 0, reset_every - phase)
        carry, dA_acc, dBf_acc, dCf_acc, dD_acc, dbias_acc = _bwd_chunk(
            carry, dA_acc, dBf_acc, dCf_acc, dD_acc, dbias_acc,
            j0, row, pos, dist, total, length, mask_d, mask_n, A_nat, A2, d_skip, bias, B_fix, C_fix,
            u_base, dt_base, z_base, dout_base, du_base, ddt_base, dz_base, B_base, C_base, dB_base, dC_base,
            hs_tile, N * n_channels, su_b, su_l, sdt_b, sdt_l, sz_b, sz_l, sdo_b, sdo_l, sdu_b, sdu_l, sddt_b, sddt_l, sdz_b, sdz_l,
            sB_b, sB_l, sC_b, sC_l, sdB_b, sdB_l,
            N, False, CHUNK, EVEN_D, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_RESET, B_FIXED, C_FIXED, FAST,
            n_state, BLOCK_D, LANE_REDUCE)

    part_nd = ((pid_r * n_channels + chan) * N)[None, :] + offs_n[:, None]
    tl.store(dA_part + part_nd, dA_acc, mask=mask_nd)
    if B_FIXED:
        tl.store(dBf_part + part_nd, dBf_acc, mask=mask_nd)
    if C_FIXED:
        tl.store(dCf_part + part_nd, dCf_acc, mask=mask_nd)
    part_d = pid_r * n_channels + chan
    tl.store(dD_part + part_d, tl.sum(dD_acc, 0), mask=mask_d)
    tl.store(ddbias_part + part_d, tl.sum(dbias_acc, 0), mask=mask_d)


# ----------------------------------------------------------------------------------------------- host


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


LANE_REDUCE_ENV = "SF_MAMBA_SCAN_LANE_REDUCE"
PREFETCH_ENV = "SF_MAMBA_SCAN_PREFETCH"


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default) not in ("0", "")


def prefetch_enabled() -> bool:
    """``SF_MAMBA_SCAN_PREFETCH=1``: the forward loads chunk i+1 while it computes chunk i.

    Off by default until a GPU has timed it: the H200 measured the forward at 0.30 of the floor
    (latency-bound, which this targets), but the prefetch costs 3 % more loop instructions (9.1
    SASS/element instead of 8.8) and nobody has measured what it buys. ``device_check`` times it."""
    return _env_flag(PREFETCH_ENV, "0")


def lane_reduce_enabled() -> bool:
    """The backward's dB/dC lane reduce-scatter (default on; ``SF_MAMBA_SCAN_LANE_REDUCE=0`` selects the
    per-value shuffle tree, e.g. to compare the two on a GPU)."""
    return _env_flag(LANE_REDUCE_ENV, "1")


def _prev_pow2(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def launch_config(length: int, n_state: int, channels_per_group: int, reset_every: int | None) -> dict:
    """Tile sizes the launcher picks (also what ``aot.py`` compiles).

    CHUNK <= length and <= reset_every, so a chunk crosses at most one row end and one segment start.
    """
    chunk = min(MAX_CHUNK, _prev_pow2(length), _prev_pow2(reset_every) if reset_every else MAX_CHUNK)
    block_d = 32 if channels_per_group >= 32 else triton.next_power_of_2(channels_per_group)
    return dict(N=triton.next_power_of_2(n_state), BLOCK_D=block_d, CHUNK=chunk, CKPT=min(MAX_CKPT, chunk),
                num_warps=1, EVEN_D=channels_per_group % block_d == 0)


def _offsets_fit_int32(*tensors) -> bool:
    """True if every element offset of every tensor fits in int32 (the kernels' fast index math)."""
    return all(sum(abs(st) * (n - 1) for st, n in zip(t.stride(), t.shape) if n) < 2**31 - 1
               for t in tensors if t is not None and t.numel())


def _channel_unit_bits(*per_channel) -> int:
    """Bit i set when tensor i's channel stride is 1 (its kernel pointer math then uses a constant)."""
    return sum(1 << i for i, t in enumerate(per_channel) if t.stride(1) == 1)


def _same_time_strides(per_channel, bc) -> bool:
    """The (batch, time) strides agree across the (batch, channels, L) tensors and across B and C."""
    first = per_channel[0]
    ok = all((t.stride(0), t.stride(2)) == (first.stride(0), first.stride(2)) for t in per_channel)
    variable = [x for x in bc if x.dim() > 2]
    return ok and len(variable) == 2 and _bc_strides(variable[0])[::3] == _bc_strides(variable[1])[::3]


def _flat_rows(per_channel, bc) -> bool:
    """Every (batch, time) tensor has batch stride == length * time stride (rows back to back)."""
    length = per_channel[0].shape[2]
    ok = all(t.stride(0) == length * t.stride(2) for t in per_channel)
    return ok and all(_bc_strides(x)[0] == length * _bc_strides(x)[3] for x in bc if x.dim() > 2)


def _empty_like_layout(x: torch.Tensor, dtype) -> torch.Tensor:
    """A dense (batch, channels, L) tensor laid out like ``x``: time-major if x is (the model's views)."""
    if x.stride(1) < x.stride(2):
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], device=x.device, dtype=dtype).transpose(1, 2)
    return torch.empty(x.shape, device=x.device, dtype=dtype)


def _bc_strides(x: torch.Tensor):
    """(s_b, s_g, s_n, s_l) for variable B/C ((batch, N, L) or (batch, G, N, L)); (s_d, 0, s_n, 0) for fixed."""
    if x.dim() == 2:
        return x.stride(0), 0, x.stride(1), 0
    if x.dim() == 3:
        return x.stride(0), 0, x.stride(1), x.stride(2)
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _groups(B, C) -> int:
    for x in (B, C):
        if x.dim() == 4:
            return x.shape[1]
    return 1


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reset_every, fold):
        batch, channels, length = u.shape
        n_state = A.shape[1]
        groups = _groups(B, C)
        cpg = channels // groups
        k = max(1, min(int(fold), batch)) if batch else 1
        cfg = launch_config(length, n_state, cpg, reset_every)
        n_rg = triton.cdiv(batch, k)
        n_dblocks = triton.cdiv(cpg, cfg["BLOCK_D"])
        save = any(ctx.needs_input_grad[:8])
        n_ckpt = triton.cdiv(k * length, cfg["CKPT"])
        out = _empty_like_layout(u, u.dtype)
        hs = torch.empty(n_rg, n_ckpt, cfg["N"], channels, device=u.device, dtype=torch.float32) if save else out
        last = torch.zeros(batch, channels, n_state, device=u.device, dtype=torch.float32) if return_last_state else out
        dummy = A
        zz = z if z is not None else u
        sB, sC = _bc_strides(B), _bc_strides(C)
        if batch and channels and length:
            _scan_fwd_kernel[(n_rg, groups * n_dblocks)](
                u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy,
                zz, out, hs, last,
                batch, length, n_state, channels, cpg, n_dblocks, k, reset_every or 1, n_ckpt,
                *u.stride(), *delta.stride(), *zz.stride(), *out.stride(), *A.stride(), *sB, *sC,
                last.stride(0), last.stride(1),
                N=cfg["N"], BLOCK_D=cfg["BLOCK_D"], CHUNK=cfg["CHUNK"], CKPT=cfg["CKPT"], EVEN_D=cfg["EVEN_D"],
                HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_RESET=reset_every is not None,
                B_FIXED=B.dim() == 2, C_FIXED=C.dim() == 2, SAVE_HS=save, SAVE_LAST=bool(return_last_state),
                FAST=not interpreting(), OFF64=not _offsets_fit_int32(u, delta, zz, out, B, C, last),
                SAME_TIME_STRIDES=_same_time_strides([u, delta, zz, out], [B, C]),
                CHANNEL_UNIT=_channel_unit_bits(u, delta, zz, out), FLAT=_flat_rows([u, delta, zz, out], [B, C]),
                PREFETCH=prefetch_enabled(),
                EVEN_N=n_state == cfg["N"],
                num_warps=cfg["num_warps"], maxnreg=FWD_SAVE_MAX_REGS if save else FWD_MAX_REGS,
            )
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hs)
            ctx.config = (bool(delta_softplus), reset_every, k, cfg, n_ckpt)
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *_ignored_last_state_grad):
        u, delta, A, B, C, D, z, delta_bias, hs = ctx.saved_tensors
        softplus, reset_every, k, cfg, n_ckpt = ctx.config
        batch, channels, length = u.shape
        n_state = A.shape[1]
        groups = _groups(B, C)
        cpg = channels // groups
        n_rg = triton.cdiv(batch, k)
        n_dblocks = triton.cdiv(cpg, cfg["BLOCK_D"])
        dev = u.device
        du = _empty_like_layout(u, u.dtype)
        ddelta = _empty_like_layout(delta, delta.dtype)
        dz = _empty_like_layout(z, z.dtype) if z is not None else None
        var_bc = B.dim() > 2 or C.dim() > 2
        dBC = torch.zeros(2 if var_bc else 0, batch, groups, n_state, length, device=dev, dtype=torch.float32)
        dB32 = dBC[0] if B.dim() > 2 else None
        dC32 = dBC[1] if C.dim() > 2 else None
        dA_part = torch.empty(n_rg, channels, cfg["N"], device=dev, dtype=torch.float32)  # N padded to a power of 2
        dD_part = torch.empty(n_rg, channels, device=dev, dtype=torch.float32)
        ddbias_part = torch.empty_like(dD_part)
        dBf_part = torch.empty_like(dA_part) if B.dim() == 2 else None
        dCf_part = torch.empty_like(dA_part) if C.dim() == 2 else None
        dummy = dA_part
        zz = z if z is not None else u
        dzz = dz if dz is not None else du
        sB, sC = _bc_strides(B), _bc_strides(C)
        sdB = dBC.stride()[1:] if var_bc else (0, 0, 0, 0)
        if batch and channels and length:
            _scan_bwd_kernel[(n_rg, groups * n_dblocks)](
                u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy,
                zz, hs, dout, du, ddelta, dzz, dB32 if dB32 is not None else dummy,
                dC32 if dC32 is not None else dummy, dA_part, dD_part, ddbias_part,
                dBf_part if dBf_part is not None else dummy, dCf_part if dCf_part is not None else dummy,
                batch, length, n_state, channels, cpg, n_dblocks, k, reset_every or 1, n_ckpt,
                *u.stride(), *delta.stride(), *zz.stride(), *dout.stride(), *du.stride(), *ddelta.stride(),
                *dzz.stride(), *A.stride(), *sB, *sC, *sdB,
                N=cfg["N"], BLOCK_D=cfg["BLOCK_D"], CHUNK=cfg["CKPT"], EVEN_D=cfg["EVEN_D"],
                HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None, SOFTPLUS=softplus,
                HAS_RESET=reset_every is not None, B_FIXED=B.dim() == 2, C_FIXED=C.dim() == 2,
                FAST=not interpreting(), OFF64=not _offsets_fit_int32(u, delta, zz, dout, du, ddelta, dzz, B, C, dBC),
                SAME_TIME_STRIDES=_same_time_strides([u, delta, zz, dout, du, ddelta, dzz], [B, C]),
                CHANNEL_UNIT=_channel_unit_bits(u, delta, zz, dout, du, ddelta, dzz),
                LANE_REDUCE=lane_reduce_enabled() and cfg["BLOCK_D"] == 32,
                num_warps=cfg["num_warps"],
            )
        else:
            for t in (dA_part, dD_part, ddbias_part, dBf_part, dCf_part):
                if t is not None:
                    t.zero_()
            du.zero_(), ddelta.zero_()
            if dz is not None:
                dz.zero_()

        def grad_bc(x, g32, part):
            if x.dim() == 2:
                return part[..., :n_state].sum(0).to(x.dtype)
            if x.dim() == 3:  # one group shared by the other operand's G groups
                return g32.sum(1).to(x.dtype)
            return g32.to(x.dtype)

        dA = dA_part[..., :n_state].sum(0).to(A.dtype)
        dD = dD_part.sum(0).to(D.dtype) if D is not None else None
        ddbias = ddbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
        return (du, ddelta, dA, grad_bc(B, dB32, dBf_part), grad_bc(C, dC32, dCf_part), dD, dz, ddbias,
                None, None, None, None)


def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reset_every,
                          fold):
    """The Triton backend (the contract's impl signature; the interface has validated the inputs).

    u, delta, z: (batch, channels, L) fp16/bf16/fp32 with any strides (read in place, never copied);
    A (channels, N) fp32; B, C each (channels, N) fixed or (batch, N, L) / (batch, G, N, L) variable;
    D, delta_bias (channels,) or None; reset_every None or T >= 1; fold k >= 1 (logical: rows
    [p*k, (p+1)*k) are scanned as one sequence). Returns out (batch, channels, L) in u's dtype and
    layout, plus last_state (batch, channels, N) fp32 (each row's state after its last token) when
    ``return_last_state``.
    """
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                      reset_every, fold)
