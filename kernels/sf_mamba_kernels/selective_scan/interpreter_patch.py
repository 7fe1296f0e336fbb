"""Test-only speed-up of triton's interpreter for custom-combine ``tl.associative_scan``.

The stock interpreter (``TRITON_INTERPRET=1``) evaluates a custom combine element by element in
Python (~5k elements/s). A combine is elementwise, so calling it once per index *along the scan
axis* on whole slices gives the identical left fold, 5-10x faster for [N, BLOCK_T] tiles.

This touches a private triton API (``triton.runtime.interpreter.ScanOps.generic_scan``); if it is
missing, :func:`install` does nothing and returns False. Never used by runtime code: only tests and
``kernels/device_check.py --cpu`` call it. It changes nothing on a GPU (compiled kernels never use
the interpreter).
"""

from __future__ import annotations

import numpy as np

_ORIGINAL = None


def _sliced_generic_scan(self, input):
    axis = self.axis
    moved = [np.moveaxis(arg.handle.data, axis, 0) for arg in input]
    outputs = [np.empty_like(m) for m in moved]
    acc = [m[0].copy() for m in moved]
    for out, a in zip(outputs, acc):
        out[0] = a
    for i in range(1, moved[0].shape[0]):
        left = tuple(self.to_tensor(a, arg.dtype) for a, arg in zip(acc, input))
        right = tuple(self.to_tensor(m[i], arg.dtype) for m, arg in zip(moved, input))
        ret = self.combine_fn.fn(*left, *right)
        ret = ret if isinstance(ret, tuple) else (ret,)
        acc = [np.asarray(r.handle.data if hasattr(r, "handle") else r).reshape(moved[j][i].shape)
               for j, r in enumerate(ret)]
        for out, a in zip(outputs, acc):
            out[i] = a
    return [self.to_tensor(np.moveaxis(out, 0, axis), arg.dtype) for out, arg in zip(outputs, input)]


def make_stdlib_interpretable() -> int:
    """Re-wrap triton.language's own ``@jit`` helpers (cdiv, sigmoid, sum, flip, ...) for the interpreter.

    ``@triton.jit`` picks compiled vs interpreted when a function is *decorated*, so if anything
    imported triton before ``TRITON_INTERPRET=1`` was set (another test module, torch's inductor),
    the standard library stays compiled-only and a kernel calling ``tl.cdiv`` fails with "Cannot
    call @triton.jit'd outside of the scope of a kernel". Returns how many were re-wrapped.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    count = 0
    for module in (tl.standard, tl.math, tl.core):
        for name, obj in list(vars(module).items()):
            if isinstance(obj, JITFunction):
                wrapped = InterpretedFunction(obj.fn)
                setattr(module, name, wrapped)
                if getattr(tl, name, None) is obj:
                    setattr(tl, name, wrapped)
                count += 1
    return count


def install() -> bool:
    """Patch the interpreter's generic scan; True if installed (idempotent).

    Also makes triton's standard library interpretable (:func:`make_stdlib_interpretable`).
    """
    global _ORIGINAL
    try:
        make_stdlib_interpretable()
    except ImportError:
        pass
    try:
        from triton.runtime.interpreter import ScanOps
    except ImportError:
        return False
    if not hasattr(ScanOps, "generic_scan") or not hasattr(ScanOps, "to_tensor"):
        return False
    if _ORIGINAL is None:
        _ORIGINAL = ScanOps.generic_scan
        ScanOps.generic_scan = _sliced_generic_scan
    return True


def uninstall() -> None:
    global _ORIGINAL
    if _ORIGINAL is not None:
        from triton.runtime.interpreter import ScanOps
        ScanOps.generic_scan = _ORIGINAL
        _ORIGINAL = None
