"""Batch folding by reshaping, for the PyTorch backends (the Triton kernel folds by index math).

``fold=k`` scans batch rows [p*k, (p+1)*k) as one sequence of k*L tokens; the last group holds
``batch % k`` rows when k does not divide the batch. Here that is done physically: the rows of a
group are laid end to end, scanned, and the output is cut back into rows. ``fold`` arrives clamped
to [1, batch] by the interface.
"""

from __future__ import annotations

import torch


def fold_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """(Bt, ..., L) -> (Bt/k, ..., k*L): k consecutive batch rows become one sequence."""
    batch, inner, length = x.shape[0], x.shape[1:-1], x.shape[-1]
    x = x.reshape(batch // k, k, *inner, length).movedim(1, -2)
    return x.reshape(batch // k, *inner, k * length)


def unfold_rows(y: torch.Tensor, k: int) -> torch.Tensor:
    """(Bt/k, Dm, k*L) -> (Bt, Dm, L), the inverse of :func:`fold_rows` for 3-D tensors."""
    groups, channels, total = y.shape
    length = total // k
    return y.reshape(groups, channels, k, length).movedim(2, 1).reshape(groups * k, channels, length)


def scan_physically_folded(scan_rows, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                           reset_every, fold):
    """Run ``scan_rows`` (one sequence per row, returning out and the state after every L tokens)
    on the folded batch and cut the results back into the original rows.

    ``scan_rows(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reset_every, state_every)``
    returns ``(out, states)`` with states (rows, Dm, total_length / state_every, N), or
    ``(out, None)`` when ``state_every`` is None.
    """
    batch, _, length = u.shape
    state_every = length if return_last_state else None

    def run(rows: slice, k: int):
        def part(x):
            return None if x is None else fold_rows(x[rows], k)

        def part_bc(x):  # fixed (Dm, N) B or C is shared by every row
            return x if x.dim() == 2 else fold_rows(x[rows], k)

        out, states = scan_rows(part(u), part(delta), A, part_bc(B), part_bc(C), D, part(z), delta_bias,
                                delta_softplus, reset_every, state_every)
        if states is not None:  # (rows/k, Dm, k, N) -> (rows, Dm, N)
            states = states.movedim(2, 1).reshape(-1, *states.shape[1:2], states.shape[-1])
        return unfold_rows(out, k) if k > 1 else out, states

    if fold == 1:
        parts = [run(slice(0, batch), 1)]
    else:
        main = (batch // fold) * fold
        parts = [run(slice(0, main), fold)]
        if main < batch:
            parts.append(run(slice(main, batch), batch - main))
    out = torch.cat([p[0] for p in parts], dim=0) if len(parts) > 1 else parts[0][0]
    if not return_last_state:
        return out
    states = torch.cat([p[1] for p in parts], dim=0) if len(parts) > 1 else parts[0][1]
    return out, states
