"""Throughput benchmark and FLOP/MAC counting (``sf_mamba bench`` / ``sf_mamba flops``)."""
