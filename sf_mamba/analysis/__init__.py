"""Analyses of trained or random models (``sf_mamba probe``: information-flow probe)."""
