"""Chunked (block-parallel) selective scan in pure PyTorch: the fast CPU path.

Same semantics as :func:`reference.selective_scan_reference`. The sequence is cut into chunks of
``chunk_size`` tokens. Inside a chunk every output is a closed-form weighted sum of the chunk's
inputs, ``h_t = sum_{s<=t} exp(sum_{r=s+1..t} log a_r) * bu_s``, evaluated for all chunks at once
with batched matmuls; only the chunk-to-chunk carry runs as a (short) Python loop. The segment sums
are built by a masked cumulative sum rather than as differences of prefix sums, so no precision is
lost to cancellation. A reset at position t is ``log a_t = -inf``, which zeroes every path through t
(exp(-inf) = 0, with zero gradient), inside and across chunks alike.

Memory is O(Bt * Dm * N * L * chunk_size) for the intra-chunk decay matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import discretize, epilogue, expand_c, reset_mask

DEFAULT_CHUNK_SIZE = 16


def _segment_sums(log_a: torch.Tensor) -> torch.Tensor:
    """(..., c) -> (..., c, c) with [t, s] = sum_{r=s+1..t} log_a[r] for s <= t, -inf above."""
    size = log_a.shape[-1]
    strict_lower = torch.ones(size, size, dtype=torch.bool, device=log_a.device).tril(-1)
    rows = log_a.unsqueeze(-1).expand(*log_a.shape, size)  # rows[r, s] = log_a[r]
    rows = rows.masked_fill(~strict_lower, 0.0)
    sums = torch.cumsum(rows, dim=-2)
    lower = torch.ones(size, size, dtype=torch.bool, device=log_a.device).tril(0)
    return sums.masked_fill(~lower, float("-inf"))


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, reset_every=None,
    return_last_state=False, chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    batch, channels, length = u.shape
    n_state = A.shape[1]
    _, log_a, bu = discretize(u, delta, A, B, delta_bias, delta_softplus)
    restart = reset_mask(length, reset_every, u.device)
    if restart is not None:
        log_a = log_a.masked_fill(restart[None, None, :, None], float("-inf"))
    c_full = expand_c(C, batch, channels, length, log_a.dtype)  # (Bt, Dm, L, N)

    chunk = max(1, min(chunk_size, length))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        # Padding is the identity step (a = 1, input 0): it leaves the carried state untouched.
        log_a = F.pad(log_a, (0, 0, 0, pad))
        bu = F.pad(bu, (0, 0, 0, pad))
        c_full = F.pad(c_full, (0, 0, 0, pad))

    def to_chunks(x):  # (Bt, Dm, Lp, N) -> (Bt, Dm, nC, N, c)
        return x.reshape(batch, channels, n_chunks, chunk, n_state).transpose(-1, -2)

    log_a, bu, c_full = to_chunks(log_a), to_chunks(bu), to_chunks(c_full)

    decay = torch.exp(_segment_sums(log_a))  # (Bt, Dm, nC, N, c, c)
    h_local = torch.matmul(decay, bu.unsqueeze(-1)).squeeze(-1)  # state from this chunk's inputs
    decay_in = torch.exp(torch.cumsum(log_a, dim=-1))  # decay of the entering state up to t

    carried = []
    state = bu.new_zeros(batch, channels, n_state)
    for k in range(n_chunks):
        carried.append(state)
        state = decay_in[:, :, k, :, -1] * state + h_local[:, :, k, :, -1]
    entering = torch.stack(carried, dim=2)  # (Bt, Dm, nC, N)

    h = h_local + decay_in * entering.unsqueeze(-1)
    y = (h * c_full).sum(dim=3).reshape(batch, channels, n_chunks * chunk)[..., :length]
    out = epilogue(y, u, D, z, u.dtype)
    return (out, state) if return_last_state else out
