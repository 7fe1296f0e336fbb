"""mmcv's compiled ops: make ``mmseg.models`` importable under mmcv-lite; refuse detection without them.

mmsegmentation 1.2.2 imports ``mmcv.ops`` at import time (``mmseg/utils/mask_classification.py``
uses ``point_sample``), and ``mmcv.ops`` loads the compiled ``mmcv._ext``. With ``mmcv-lite`` (no
compiled ops) that import fails, although UperNet never calls a compiled op. The full mmcv 2.1.0
wheel (``make venv``: a prebuilt wheel or a build from the sdist, tools/install_mmcv.py) has ``_ext``.

:func:`ensure_mmcv_ops` checks for ``mmcv._ext``; if it is missing it installs a *stub* module
(with a loud warning) whose every attribute is a function raising ``NotImplementedError`` naming the
op -- enough for ``mmcv.ops``'s import-time ``hasattr`` checks; pure-PyTorch helpers keep working,
and a model that really needs a compiled op fails with a clear message when it calls it.
Set ``SF_MAMBA_NO_MMCV_STUB=1`` to get an immediate error instead.

Detection really calls compiled ops (RPN NMS, RoIAlign): :func:`missing_compiled_ops` names the ones
absent, so ``det-train`` / ``det-test`` refuse at start instead of failing deep inside a forward.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

STUB_ENV = "SF_MAMBA_NO_MMCV_STUB"


class MmcvOpsUnavailable(ImportError):
    pass


class _ExtStub(types.ModuleType):
    """Stand-in for ``mmcv._ext``: attributes exist, calling them fails clearly."""

    __sf_mamba_stub__ = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*_args, **_kwargs):
            raise NotImplementedError(
                f"mmcv compiled op {name!r} is not available: this environment has mmcv-lite "
                "(no compiled ops). " + INSTALL_HINT[0].upper() + INSTALL_HINT[1:] + ".")

        missing.__name__ = name
        return missing


def has_compiled_ops() -> bool:
    mod = sys.modules.get("mmcv._ext")
    if mod is not None:
        return not getattr(mod, "__sf_mamba_stub__", False)
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


# What Mask R-CNN / Cascade Mask R-CNN call on every forward (mmcv.ops.nms, RoIAlign).
DETECTION_OPS: tuple[str, ...] = ("nms", "roi_align_forward", "roi_align_backward")
INSTALL_HINT = ("install mmcv 2.1.0 with its compiled ops: `make venv` (prebuilt wheel, else a one-time "
                "build from the sdist) or `python tools/install_mmcv.py`; see docs/install.md")


def missing_compiled_ops(ops=DETECTION_OPS) -> list[str]:
    """The ops of ``ops`` that ``mmcv._ext`` lacks (all of them under mmcv-lite or our stub)."""
    try:
        ext = importlib.import_module("mmcv._ext")
    except ImportError:
        return list(ops)
    if getattr(ext, "__sf_mamba_stub__", False):
        return list(ops)
    return [op for op in ops if not hasattr(ext, op)]


def ensure_mmcv_ops(allow_stub: bool | None = None) -> str:
    """Return ``'compiled'`` or ``'stub'``; raise :class:`MmcvOpsUnavailable` if stubbing is off."""
    if importlib.util.find_spec("mmcv") is None:
        raise MmcvOpsUnavailable("mmcv is not installed: pip install the mmcv 2.1.0 wheel "
                                 "(or mmcv-lite==2.1.0); see docs/install.md")
    if has_compiled_ops():
        try:
            importlib.import_module("mmcv._ext")
            return "compiled"
        except ImportError as err:  # e.g. built against another torch: undefined symbols
            reason = f"mmcv._ext fails to load ({err})"
    else:
        if getattr(sys.modules.get("mmcv._ext"), "__sf_mamba_stub__", False):
            return "stub"
        reason = "mmcv has no compiled ops (mmcv-lite)"
    if allow_stub is None:
        allow_stub = os.environ.get(STUB_ENV, "") in ("", "0")
    if not allow_stub:
        raise MmcvOpsUnavailable(
            f"{reason}; mmsegmentation imports mmcv.ops at import time. Install the full mmcv 2.1.0 "
            f"(see docs/install.md), or unset {STUB_ENV} to run UperNet with a stub.")
    warnings.warn(f"sf_mamba.openmmlab: {reason}; installing a stub mmcv._ext (UperNet needs no compiled "
                  "op; any model that does will raise NotImplementedError when it calls one)",
                  RuntimeWarning, stacklevel=2)
    stub = _ExtStub("mmcv._ext")
    # a spec without a loader: importlib.util.find_spec works, and mmengine's mmcv_full_available()
    # (pkgutil.find_loader) correctly answers False
    stub.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    sys.modules["mmcv._ext"] = stub
    setattr(importlib.import_module("mmcv"), "_ext", stub)  # as a real submodule import would
    return "stub"


__all__ = ["ensure_mmcv_ops", "has_compiled_ops", "missing_compiled_ops", "MmcvOpsUnavailable", "STUB_ENV",
           "DETECTION_OPS", "INSTALL_HINT"]
