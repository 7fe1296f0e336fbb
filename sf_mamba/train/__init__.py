"""Classification training and evaluation on timm components (``sf_mamba train`` / ``sf_mamba eval``)."""
