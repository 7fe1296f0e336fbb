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
"""

from .interface import BACKENDS, check_fold, resolve_backend, selective_scan_fn
from .recurrent import selective_scan_recurrent
from .reference import selective_scan_ref

__all__ = ["BACKENDS", "check_fold", "resolve_backend", "selective_scan_fn", "selective_scan_recurrent",
           "selective_scan_ref"]
