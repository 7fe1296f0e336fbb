"""The SF-Mamba model family (one module: :mod:`sf_mamba.models.sf_mamba`), registered in timm."""

from .sf_mamba import AUX_DISCARDS, AUX_INITS, SCANS, VARIANTS, SFMamba, VariantSpec

__all__ = ["SFMamba", "VARIANTS", "VariantSpec", "SCANS", "AUX_INITS", "AUX_DISCARDS"]
