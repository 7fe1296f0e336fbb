"""The one selective-scan interface every caller uses; implementations live in sf_mamba_kernels.

``selective_scan`` validates its inputs, applies batch folding, and dispatches to a backend:

- ``'reference'``: sequential fp32 loop (the oracle; exact fold invariance);
- ``'torch'``: time-major recurrence with a hand-written backward (fast on CPU);
- ``'triton'``: fused Triton kernels (CUDA, or the interpreter with ``TRITON_INTERPRET=1``);
- ``'auto'``: Triton for CUDA tensors when it is importable, otherwise ``'torch'``.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

import torch

from sf_mamba_kernels.selective_scan import selective_scan_recurrent, selective_scan_reference

BACKENDS = ("auto", "torch", "reference", "triton")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _triton_impl() -> Callable | None:
    """The Triton scan if the kernels and a usable Triton runtime are present, else None."""
    try:
        module = importlib.import_module("sf_mamba_kernels.selective_scan.triton_scan")
    except ImportError:
        return None
    return getattr(module, "selective_scan_triton", None)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map 'auto' to a concrete backend for tensors on ``device``; validate explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _triton_impl() is not None:
            return "triton"
        return "torch"
    if backend == "triton":
        if _triton_impl() is None:
            raise RuntimeError("backend='triton' requested but the Triton kernels are not available "
                               "(install the 'kernels' extra)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 on CPU")
    return backend


def _check_tensor(name, x, shape, dtypes=_FLOATS):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have a floating dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, reset_every, fold):
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a (batch, channels, length) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    batch, channels, length = u.shape
    _check_tensor("u", u, u.shape)
    _check_tensor("delta", delta, u.shape)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state), got "
                         f"{tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__}")
    if A.is_complex():
        raise TypeError("A must be real; complex A is not supported")
    _check_tensor("A", A, A.shape)
    n_state = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 2:
            _check_tensor(name, x, (channels, n_state))
        elif x.dim() == 3:
            _check_tensor(name, x, (batch, n_state, length))
        elif x.dim() == 4:
            groups = x.shape[1]
            if groups < 1 or channels % groups:
                raise ValueError(f"{name} has {groups} groups, which must divide channels={channels}")
            _check_tensor(name, x, (batch, groups, n_state, length))
        else:
            raise ValueError(f"{name} must be (channels, d_state), (batch, d_state, length) or "
                             f"(batch, groups, d_state, length), got {tuple(x.shape)}")
    if D is not None:
        _check_tensor("D", D, (channels,))
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, (channels,))
    if z is not None:
        _check_tensor("z", z, u.shape)
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if x is not None and x.device != u.device:
            raise ValueError(f"{name} is on {x.device} but u is on {u.device}")
    if not isinstance(fold, int) or isinstance(fold, bool) or fold < 1:
        raise ValueError(f"fold must be a positive int, got {fold!r}")
    if reset_every is not None:
        if not isinstance(reset_every, int) or isinstance(reset_every, bool) or reset_every < 1:
            raise ValueError(f"reset_every must be a positive int or None, got {reset_every!r}")
        k = min(fold, batch)
        for group in {k, batch % k} - {0}:
            if (group * length) % reset_every:
                raise ValueError(f"reset_every={reset_every} must divide the scanned sequence length "
                                 f"{group * length} ({group} row(s) of length {length} folded)")


def _unit_stride_last(x: torch.Tensor | None) -> torch.Tensor | None:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _fold_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """(Bt, ..., L) -> (Bt/k, ..., k*L): k consecutive batch rows become one sequence."""
    batch = x.shape[0]
    inner = x.shape[1:-1]
    length = x.shape[-1]
    x = x.reshape(batch // k, k, *inner, length).movedim(1, -2)
    return x.reshape(batch // k, *inner, k * length)


def _unfold_rows(y: torch.Tensor, k: int) -> torch.Tensor:
    groups, channels, total = y.shape
    length = total // k
    return y.reshape(groups, channels, k, length).movedim(2, 1).reshape(groups * k, channels, length)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, reset_every=None,
    fold: int = 1, *, backend: str = "auto",
):
    """Mamba-1 selective scan with periodic state reset and batch folding.

    Args:
        u, delta, z: (batch, channels, L).
        A: (channels, d_state). B, C: (batch, d_state, L), (batch, groups, d_state, L) or
            (channels, d_state). D, delta_bias: (channels,).
        reset_every: T; the state is zero before every scanned position t with t % T == 0.
        fold: k; each k consecutive batch rows are scanned as one sequence of k*L tokens (the last
            group holds batch % k rows if k does not divide batch). With ``reset_every=L`` the
            result equals the unfolded run; without a reset, state leaks between rows.
        backend: 'auto' | 'torch' | 'reference' | 'triton'.
    Returns:
        (batch, channels, L) in u's dtype.
    """
    validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, reset_every, fold)
    backend = resolve_backend(backend, u.device)
    kwargs = dict(D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, reset_every=reset_every)
    if backend == "triton":
        # like mamba_ssm's selective_scan_fn: the kernel needs unit stride along L
        u, delta, B, C, z = (_unit_stride_last(x) for x in (u, delta, B, C, z))
        return _triton_impl()(u, delta, A, B, C, z=z, fold=fold, **kwargs)
    impl = selective_scan_reference if backend == "reference" else selective_scan_recurrent
    batch = u.shape[0]
    fold = min(fold, batch)
    if fold == 1:
        return impl(u, delta, A, B, C, z=z, **kwargs)

    def run(rows: slice, k: int):
        def part(x):
            return None if x is None else _fold_rows(x[rows], k)

        def part_bc(x):
            return x if x.dim() == 2 else _fold_rows(x[rows], k)

        out = impl(part(u), part(delta), A, part_bc(B), part_bc(C), z=part(z), **kwargs)
        return _unfold_rows(out, k)

    main = (batch // fold) * fold
    outs = [run(slice(0, main), fold)]
    if main < batch:
        outs.append(run(slice(main, batch), batch - main))
    return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
