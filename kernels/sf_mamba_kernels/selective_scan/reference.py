"""Sequential reference of the Mamba-1 selective scan with periodic state reset (fp64 inside).

This is the oracle every other implementation (the chunked PyTorch scan, the Triton kernels) is
tested against. It follows mamba_ssm's ``selective_scan_ref`` semantics (see docs/kernels.md):

    delta' = softplus(delta + delta_bias)            (softplus optional)
    h_t    = a_t * h_{t-1} + delta'_t * B_t * u_t     with a_t = exp(delta'_t * A)
    y_t    = <C_t, h_t> + D * u_t ;  out = y * silu(z)  (z optional)

plus ``reset_every=T``: the state is zero before every position t with t % T == 0, i.e. a_t := 0
there. This turns the scan into a segmented scan, which is what makes batch folding exact.

Shapes (Bt = batch, Dm = channels, N = state size, L = length, G = groups):
    u, delta, z : (Bt, Dm, L)          any float dtype; computed in fp32, returned in u.dtype
    A           : (Dm, N)              real
    B, C        : (Bt, N, L) or (Bt, G, N, L) input-dependent, or (Dm, N) fixed
    D, delta_bias : (Dm,)
Depends on torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """fp32 accumulation for every input dtype; fp64 stays fp64 (for gradcheck)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def expand_bc(x: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """Input-dependent B or C as (Bt, Dm, N, L) (groups repeated over their channels)."""
    if x.dim() == 3:
        return x.to(dtype).unsqueeze(1).expand(-1, channels, -1, -1)
    groups = x.shape[1]
    return x.to(dtype).repeat_interleave(channels // groups, dim=1)


def expand_c(C: torch.Tensor, batch: int, channels: int, length: int, dtype) -> torch.Tensor:
    """C as (Bt, Dm, L, N) whatever its layout (fixed or input-dependent)."""
    if C.dim() == 2:
        return C.to(dtype)[None, :, None, :].expand(batch, -1, length, -1)
    return expand_bc(C, channels, dtype).transpose(2, 3)


def discretize(u, delta, A, B, delta_bias, delta_softplus, dtype):
    """Prologue: delta after bias/softplus, log-decay delta*A and the input term, in ``dtype``.

    Returns ``log_a`` (Bt, Dm, L, N) and ``bu`` (Bt, Dm, L, N).
    """
    channels = u.shape[1]
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        # threshold 20 like mamba_ssm: softplus(x) == x beyond it, in fp32.
        delta = F.softplus(delta, beta=1.0, threshold=20.0)
    log_a = delta.unsqueeze(-1) * A.to(dtype)[None, :, None, :]
    du = (delta * u.to(dtype)).unsqueeze(-1)
    if B.dim() == 2:  # fixed B: (Dm, N)
        bu = du * B.to(dtype)[None, :, None, :]
    else:
        bu = du * expand_bc(B, channels, dtype).transpose(2, 3)
    return log_a, bu


def epilogue(y, u, D, z, out_dtype):
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def reset_mask(length: int, reset_every: int | None, device) -> torch.Tensor | None:
    """Bool (L,) that is True at the positions where the state restarts from zero."""
    if reset_every is None:
        return None
    return torch.arange(length, device=device) % reset_every == 0


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, reset_every=None,
    return_last_state=False,
):
    """Sequential selective scan; differentiable through autograd. See the module docstring.

    It computes in float64 whatever the input dtype: the oracle should be more accurate than what
    it judges, and fp64 makes batch folding bit-exact after the final cast (fp32 vectorised and
    scalar code paths round differently, and folding moves elements between them).
    """
    batch, channels, length = u.shape
    log_a, bu = discretize(u, delta, A, B, delta_bias, delta_softplus, torch.float64)
    a = torch.exp(log_a)
    restart = reset_mask(length, reset_every, u.device)
    if restart is not None:
        a = a.masked_fill(restart[None, None, :, None], 0.0)
    c_full = expand_c(C, batch, channels, length, a.dtype)
    h = a.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = a[:, :, t] * h + bu[:, :, t]
        ys.append((h * c_full[:, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    out = epilogue(y, u, D, z, u.dtype)
    return (out, h) if return_last_state else out
