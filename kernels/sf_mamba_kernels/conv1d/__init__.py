"""Fold-aware depthwise conv1d: taps that cross an image boundary of a folded sequence are masked."""

from .reference import fold_aware_conv1d_reference, periodic_conv1d

__all__ = ["fold_aware_conv1d_reference", "periodic_conv1d"]
