"""The static model's figures, guarded: None where it has no figure for a shape (or is absent).

``static_model`` (the Triton kernel compiled for sm_90 without a GPU, its time estimated from the
SASS; see docs/kernels.md) is the source; this module only makes "no figure" a None instead of an
exception, for the interface's fold='auto' veto, the measurement code and the RQ2 report. Torch-free.
Every figure is a *prediction* and must be labelled "predicted (static, sm_90)" wherever it is shown.
"""

from __future__ import annotations

ARCH = "sm_90"


def _model():
    try:
        from . import static_model
    except ImportError:
        return None
    return static_model


def fold_speedup(batch: int, length: int, channels: int, d_state: int, fold: int, dtype: str) -> float | None:
    """Predicted time(fold=1) / time(fold) on sm_90 (``dtype`` 'float16' | 'bfloat16' | 'float32')."""
    model = _model()
    if model is None:
        return None
    try:
        return float(model.predict_fold_speedup(int(batch), int(length), int(channels), int(d_state), int(fold),
                                                dtype, arch=ARCH))
    except (KeyError, ValueError, OSError):  # no figures for this shape/dtype/fold, or no figures file
        return None


def time_us(batch: int, length: int, channels: int, d_state: int, fold: int, dtype: str,
            direction: str = "fwd") -> float | None:
    """Predicted kernel time in µs on sm_90 (``direction`` 'fwd', 'fwd_save', 'bwd' or 'fwdbwd')."""
    model = _model()
    if model is None:
        return None
    try:
        return float(model.predict_time_us(int(batch), int(length), int(channels), int(d_state), int(fold), dtype,
                                           arch=ARCH, direction=direction))
    except (KeyError, ValueError, OSError):
        return None
