"""Dense metrics, overall and per raster-order region, from confusion matrices.

Per-image confusion matrices are kept (``per_image_confusion``) so that runs can be compared
paired per test image (``stats.py``); every aggregate is a function of summed confusions.
"""

from __future__ import annotations

import numpy as np
import torch

from sf_mamba.future_context.data import NUM_CLASSES, REGIONS, region_masks


def per_image_confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(N, R, K, K) int64 counts, R = len(REGIONS); [n, r, true, predicted]."""
    if pred.shape != label.shape or pred.dim() != 3:
        raise ValueError(f"pred and label must both be (N, H, W), got {tuple(pred.shape)} and {tuple(label.shape)}")
    n, h, w = label.shape
    masks = region_masks(h, w)
    out = np.zeros((n, len(REGIONS), num_classes, num_classes), dtype=np.int64)
    flat = (label * num_classes + pred).long()
    for r, name in enumerate(REGIONS):
        cells = flat[:, masks[name]]                              # (N, cells)
        offsets = torch.arange(n).view(-1, 1) * num_classes ** 2
        counts = torch.bincount((cells + offsets).flatten(), minlength=n * num_classes ** 2)
        out[:, r] = counts.view(n, num_classes, num_classes).numpy()
    return out


def scores(conf: np.ndarray) -> dict[str, float]:
    """mIoU (over classes present in labels or predictions), pixel accuracy and ink-pixel accuracy
    (true class > 0) of one (K, K) confusion matrix; percentages."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    total = conf.sum()
    ink = conf[1:].sum()
    return {"miou": 100.0 * float((tp[present] / union[present]).mean()) if present.any() else float("nan"),
            "pixel_acc": 100.0 * float(tp.sum() / total) if total else float("nan"),
            "fg_acc": 100.0 * float(tp[1:].sum() / ink) if ink else float("nan")}


def region_scores(conf: np.ndarray) -> dict[str, dict[str, float]]:
    """{'overall': ..., 'top': ..., 'bottom': ...} from (N, R, K, K) or (R, K, K) confusions."""
    conf = np.asarray(conf)
    if conf.ndim == 4:
        conf = conf.sum(0)
    out = {"overall": scores(conf.sum(0))}
    for r, name in enumerate(REGIONS):
        out[name] = scores(conf[r])
    return out
