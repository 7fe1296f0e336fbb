"""``selective_scan_fn``: the one entry point of the selective scan, a drop-in for mamba_ssm's.

It validates its arguments once, resolves ``backend`` ('auto' -> 'triton' for CUDA tensors when the
kernels import, else 'torch') and ``fold`` ('auto' -> the per-GPU LUT, vetoed by the static model;
an int is clamped to the batch), then calls the backend, which trusts what it gets:

- ``'reference'``: :func:`.reference.selective_scan_ref`, the float64 sequential oracle;
- ``'torch'``: :func:`.recurrent.selective_scan_recurrent`, time-major recurrence, fast on CPU;
- ``'triton'``: :func:`.triton_scan.selective_scan_triton` (CUDA, or ``TRITON_INTERPRET=1``).

Every backend has the signature ``impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
return_last_state, reset_every, fold)`` (positional, no defaults) and accepts the same inputs.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

import torch

from . import lut, predicted
from .recurrent import selective_scan_recurrent
from .reference import selective_scan_ref

BACKENDS = ("auto", "torch", "reference", "triton")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------- backends


def _triton_impl() -> Callable | None:
    """The Triton backend if the kernels and a usable Triton runtime import, else None.

    Looked up on every call (a dict lookup in sys.modules): tests reload the module under the
    interpreter and must get the reloaded kernels."""
    try:
        module = importlib.import_module("sf_mamba_kernels.selective_scan.triton_scan")
    except ImportError:
        return None
    return getattr(module, "selective_scan_triton", None)


def backend_impl(backend: str) -> Callable:
    """The implementation of a concrete backend ('torch', 'reference' or 'triton')."""
    if backend == "triton":
        return _triton_impl()
    return {"torch": selective_scan_recurrent, "reference": selective_scan_ref}[backend]


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> a concrete backend for tensors on ``device``; explicit choices are checked."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_impl() is not None else "torch"
    if backend == "triton":
        if _triton_impl() is None:
            raise RuntimeError("backend='triton' requested but the Triton kernels are not importable "
                               "(install the 'kernels' extra)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 on CPU")
    return backend


# ---------------------------------------------------------------------------------------------- fold


def check_fold(fold) -> None:
    """``fold`` is a positive int or 'auto' (the one place this rule is written)."""
    if not (fold == "auto" or (isinstance(fold, int) and not isinstance(fold, bool) and fold >= 1)):
        raise ValueError(f"fold must be a positive int or 'auto', got {fold!r}")


def _predicted_fold_speedup(batch, length, channels, d_state, fold, dtype) -> float | None:
    return predicted.fold_speedup(batch, length, channels, d_state, fold, lut.dtype_name(dtype))


def fold_predicted_slower(batch, length, channels, d_state, fold, dtype) -> bool:
    """True when the static model predicts fold ``fold`` slower than no folding (fold='auto' then
    uses 1); False where the model has no figure for this shape."""
    if fold == 1:
        return False
    speedup = _predicted_fold_speedup(batch, length, channels, d_state, fold, dtype)
    return speedup is not None and speedup < 1.0


# ---------------------------------------------------------------------------------------------- validation


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_tensor(name, x, shape, dtypes=_FLOATS):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have a floating dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def _check_bc(name, x, batch, channels, n_state, length):
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


def validate_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reset_every,
                       fold, backend) -> None:
    """Raise (naming the argument) unless the arguments are a valid call; the fold-dependent rule
    for ``reset_every`` is :func:`check_reset_every`, after 'auto' is resolved."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a (batch, channels, length) tensor, got {_shape(u)}")
    batch, channels, length = u.shape
    _check_tensor("u", u, u.shape)
    _check_tensor("delta", delta, u.shape)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state), got {_shape(A)}")
    if A.is_complex():
        raise TypeError("A must be real; complex A is not supported")
    _check_tensor("A", A, A.shape)
    n_state = A.shape[1]
    _check_bc("B", B, batch, channels, n_state, length)
    _check_bc("C", C, batch, channels, n_state, length)
    if D is not None:
        _check_tensor("D", D, (channels,))
    if z is not None:
        _check_tensor("z", z, u.shape)
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, (channels,))
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if x is not None and x.device != u.device:
            raise ValueError(f"{name} is on {x.device} but u is on {u.device}")
    # a call ported from mamba_ssm passes these two positionally; anything but a bool here is
    # most likely reset_every/fold given positionally (they are keyword-only)
    for name, flag in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r} (reset_every, fold and backend are "
                            f"keyword-only)")
    if reset_every is not None and (not isinstance(reset_every, int) or isinstance(reset_every, bool)
                                    or reset_every < 1):
        raise ValueError(f"reset_every must be a positive int or None, got {reset_every!r}")
    check_fold(fold)
    if fold == "auto" and (reset_every is None or length % reset_every):
        raise ValueError(f"fold='auto' needs reset_every dividing the length {length} (got {reset_every!r}): "
                         f"only then is the result the same whichever fold the table picks")
    if backend == "triton":
        for name, x in (("u", u), ("delta", delta), ("z", z)):
            if x is not None and x.dtype not in _TRITON_FLOATS:
                raise TypeError(f"{name} has dtype {x.dtype}, which backend='triton' does not support "
                                f"(fp16/bf16/fp32; use backend='reference' for fp64)")


def check_reset_every(reset_every, fold: int, batch: int, length: int) -> None:
    """Every scanned sequence (k rows, and the batch % k rows of a ragged last group) must be a
    whole number of reset periods, or the segments would straddle sequences."""
    if reset_every is None:
        return
    for rows in (fold, batch % fold):  # a tuple, not a set: under torch.export batch is a SymInt
        if rows and (rows * length) % reset_every:
            raise ValueError(f"reset_every={reset_every} must divide the scanned sequence length "
                             f"{rows * length} ({rows} row(s) of length {length} folded)")


# ---------------------------------------------------------------------------------------------- the op


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, reset_every=None, fold=1, backend="auto"):
    """Mamba-1 selective scan (mamba_ssm's ``selective_scan_fn`` signature) with periodic state
    reset and batch folding.

    Args:
        u, delta, z: (batch, channels, L), any strides; fp16/bf16/fp32 (fp64 on the PyTorch backends).
        A: (channels, d_state), real. B, C: each independently (batch, d_state, L),
            (batch, groups, d_state, L) or fixed (channels, d_state). D, delta_bias: (channels,).
        delta_softplus: apply softplus to delta + delta_bias (mamba_ssm's default: False).
        return_last_state: also return each row's final state (batch, channels, d_state), fp32.
        reset_every: T; the state is zero before every scanned position t with t % T == 0.
        fold: k, or 'auto'; k consecutive batch rows are scanned as one sequence of k*L tokens (the
            last group holds batch % k rows). With ``reset_every=L`` the result equals fold=1;
            without a reset, state leaks between rows. 'auto' needs reset_every dividing L.
        backend: 'auto' | 'torch' | 'reference' | 'triton'.
    Returns:
        out (batch, channels, L) in u's dtype, or (out, last_state).
    """
    validate_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reset_every,
                       fold, backend)
    batch, channels, length = u.shape
    backend = resolve_backend(backend, u.device)
    auto = fold == "auto"
    if auto:  # the LUT's k for this GPU and shape; 1 on CPU or without an entry
        fold = lut.lookup_fold(batch, length, channels, u.dtype, u.device)
    fold = max(1, min(fold, batch))  # the one clamp: k > batch folds the whole batch
    if auto and fold_predicted_slower(batch, length, channels, A.shape[1], fold, u.dtype):
        fold = 1
    check_reset_every(reset_every, fold, batch, length)
    return backend_impl(backend)(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                 reset_every, fold)
