"""The selective scan's specification: a sequential loop that computes in float64 (the oracle).

Every other backend (the CPU recurrence, the Triton kernels) is tested against this one. It follows
mamba_ssm's ``selective_scan_ref`` semantics (shared notes, kernels.md §1.1), per channel d and
state n:

    delta' = delta + delta_bias, then softplus(delta') if delta_softplus (threshold 20)
    a_t    = exp(delta'_t * A)
    h_t    = a_t * h_{t-1} + delta'_t * B_t * u_t          (h_{-1} = 0)
    h_t    = delta'_t * B_t * u_t    where t % reset_every == 0 (the state restarts from zero)
    y_t    = <C_t, h_t> + D * u_t ;  out = y * silu(z)     (D, z optional)

``reset_every`` turns the scan into a segmented scan, which is what makes batch folding exact. The
reset replaces the state instead of multiplying it by a_t = 0, so a non-finite state stays in its
own segment (0 * inf would be NaN).
``fold=k`` scans batch rows [p*k, (p+1)*k) as one sequence of k*L tokens (see :mod:`.folding`).

Precision: whatever the input dtype, every step runs in float64 (the oracle must be more accurate
than what it judges, and fp64 makes folding bit-exact after the final cast). ``out`` is cast back
to ``u.dtype``; ``last_state`` is float32 (float64 for float64 inputs). Gradients flow through
autograd in float64 and come back in each input's dtype.

Shapes (Bt = batch, Dm = channels, N = d_state, L = length, G = groups):
    u, delta, z : (Bt, Dm, L)
    A           : (Dm, N) real
    B, C        : each (Bt, N, L) or (Bt, G, N, L) input-dependent, or (Dm, N) fixed
    D, delta_bias : (Dm,)
Depends on torch only. Inputs are trusted: the interface (:mod:`.interface`) validated them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .folding import scan_physically_folded

ORACLE_DTYPE = torch.float64


def expand_bc(x: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """Input-dependent B or C as (Bt, Dm, N, L): a group's rows repeated over its channels."""
    if x.dim() == 3:
        return x.to(dtype).unsqueeze(1).expand(-1, channels, -1, -1)
    groups = x.shape[1]
    return x.to(dtype).repeat_interleave(channels // groups, dim=1)


def bc_per_step(x: torch.Tensor, batch: int, channels: int, length: int, dtype) -> torch.Tensor:
    """B or C as (Bt, Dm, L, N) whatever its layout (fixed or input-dependent)."""
    if x.dim() == 2:
        return x.to(dtype)[None, :, None, :].expand(batch, -1, length, -1)
    return expand_bc(x, channels, dtype).transpose(2, 3)


def _scan_rows(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reset_every, state_every):
    """One sequence per batch row; returns out and h at t = state_every-1, 2*state_every-1, ...
    (states (Bt, Dm, L/state_every, N), or None when state_every is None)."""
    batch, channels, length = u.shape
    dtype = ORACLE_DTYPE
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt, beta=1.0, threshold=20.0)
    a = torch.exp(dt.unsqueeze(-1) * A.to(dtype)[None, :, None, :])  # (Bt, Dm, L, N)
    bu = (dt * u.to(dtype)).unsqueeze(-1) * bc_per_step(B, batch, channels, length, dtype)
    c = bc_per_step(C, batch, channels, length, dtype)
    h = a.new_zeros(batch, channels, A.shape[1])
    ys, states = [], []
    for t in range(length):
        # a reset replaces the state (0 * inf would carry a NaN into the next image of a fold group)
        if reset_every is not None and t % reset_every == 0:
            h = bu[:, :, t] + 0.0 * a[:, :, t]  # a stays in the graph: dA is 0, not None, at T = 1
        else:
            h = a[:, :, t] * h + bu[:, :, t]
        ys.append((h * c[:, :, t]).sum(-1))
        if state_every is not None and (t + 1) % state_every == 0:
            states.append(h.detach())
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    if state_every is None:
        return y.to(u.dtype), None
    state_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    return y.to(u.dtype), torch.stack(states, dim=2).to(state_dtype)


def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reset_every, fold):
    """The 'reference' backend (the backend signature of the interface: positional, no defaults).

    Returns out (Bt, Dm, L) in u.dtype, or (out, last_state) with last_state (Bt, Dm, N): each
    row's state after its own last token (not differentiable, as in mamba_ssm).
    """
    return scan_physically_folded(_scan_rows, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, reset_every, fold)
