"""Segmented selective scan: the sequential reference (the oracle) and the fast PyTorch recurrence.

The Triton kernels (``triton_scan``) sit beside them and are tested against the reference.
"""

from .recurrent import selective_scan_recurrent
from .reference import selective_scan_reference

__all__ = ["selective_scan_reference", "selective_scan_recurrent"]
