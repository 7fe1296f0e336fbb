"""Ops behind one interface: the selective scan, batch folding and the fold lookup table."""

from .selective_scan import BACKENDS, resolve_backend, selective_scan

__all__ = ["BACKENDS", "resolve_backend", "selective_scan"]
