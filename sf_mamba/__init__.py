"""sf_mamba: SF-Mamba / MambaVision model family, ops, training and reproduction pipeline.

``import sf_mamba`` registers the models with timm (``timm.create_model('sf_mamba_t')``).
"""

__version__ = "0.1.0"

from . import models  # noqa: E402,F401  (registers the timm models)
