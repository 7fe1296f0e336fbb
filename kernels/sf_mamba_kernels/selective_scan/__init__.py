"""The selective scan, whole: interface, float64 reference, CPU recurrence, Triton kernels, fold LUT,
input generator and measurement, in the manner of flash-linear-attention's ``fla/ops/<op>/``.

    from sf_mamba_kernels.selective_scan import selective_scan_fn
    out = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                            reset_every=L, fold="auto")

==================  =========================================================================
``interface``       ``selective_scan_fn`` (mamba_ssm's signature + keyword-only ``reset_every``,
                    ``fold``, ``backend``): validates once, resolves backend and fold
``reference``       the spec: sequential loop in float64 (backend 'reference')
``recurrent``       time-major recurrence with a hand-written backward (backend 'torch', CPU)
``triton_scan``     the Triton kernels (backend 'triton'; CUDA or ``TRITON_INTERPRET=1``)
``folding``         batch folding by reshape, for the two PyTorch backends
``lut``             the per-GPU fold table behind ``fold='auto'``; ``lut_cli``: ``sf_mamba lut``
``testing``         the one input generator and mamba_ssm's tolerances
``bench``           timers, fold sweep, LUT build, roofline and static predictions
==================  =========================================================================

Attributes load lazily, so importing a torch-free submodule (``static_model``, used by the report)
does not import torch through this package.
"""

import importlib

_EXPORTS = {
    "BACKENDS": "interface", "check_fold": "interface", "resolve_backend": "interface",
    "selective_scan_fn": "interface", "selective_scan_recurrent": "recurrent", "selective_scan_ref": "reference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
