"""Segmented selective scan: sequential reference (the oracle) and chunked PyTorch path."""

from .chunked import selective_scan_chunked
from .reference import selective_scan_reference

__all__ = ["selective_scan_reference", "selective_scan_chunked"]
