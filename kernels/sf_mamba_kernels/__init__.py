"""sf_mamba_kernels: the ops behind sf_mamba, one folder per op, each PyTorch reference beside its
fast paths. Depends on torch (and, for the Triton kernels, triton) only.

Imported as ``sf_mamba_kernels`` (not ``kernels``: that name belongs to a popular PyPI package).
"""
