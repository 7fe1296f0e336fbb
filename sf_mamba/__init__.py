"""sf_mamba: SF-Mamba / MambaVision model family, ops, training and reproduction pipeline.

``import sf_mamba`` registers the models with timm (``timm.create_model('sf_mamba_t')``), yet stays
light: it imports neither torch nor timm itself, so ``sf_mamba launch|gather|report`` start without
them. Registration happens in :mod:`sf_mamba.models` (explicit ``@register_model`` factories), which
is imported here at once if timm is already imported, and otherwise right after timm's own import
finishes (a one-shot import hook; a process that never imports timm never pays for torch).
Subpackages are also reachable as attributes (``sf_mamba.models``), imported on first use.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

_MODELS = "sf_mamba.models"


def _register_models() -> None:
    if _MODELS not in sys.modules:  # already imported, or importing (it then registers itself)
        importlib.import_module(_MODELS)


class _RegisterAfterTimmImport:
    """``sys.meta_path`` finder that answers only for ``timm``: it finds timm's spec through the
    other finders and wraps its loader so that, once timm has executed, ``sf_mamba.models`` is
    imported (which registers the models); then it removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None:
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_timm = loader.exec_module

        def exec_then_register(module):
            exec_timm(module)
            del loader.exec_module  # back to the class's own method
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_models()

        loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(finder, _RegisterAfterTimmImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimmImport())


def __getattr__(name: str):
    """``sf_mamba.<subpackage>`` imported on first attribute access (PEP 562)."""
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
