"""The digits-as-segmentation task: images, label maps, the fixed split and the raster regions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

GRID = 8                 # sklearn digits are 8x8; the label map is this grid (one cell = one token)
INK_THRESHOLD = 4.0      # of 16: a cell is foreground (carries the digit's class) above this
NUM_CLASSES = 11         # 0 = background, 1..10 = digit 0..9
REGIONS = ("top", "bottom")   # first / second half of the rows = of the raster order


@dataclass
class FutureContextTask:
    """Tensors of one split: images (N, 3, S, S) float32, labels (N, 8, 8) int64, digit (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    digits: torch.Tensor
    indices: np.ndarray   # rows of sklearn's load_digits()

    def __len__(self) -> int:
        return len(self.labels)


def label_map(digit_image: np.ndarray, digit: int) -> np.ndarray:
    """(8, 8) int64 map: ``digit + 1`` on ink cells, 0 elsewhere."""
    return np.where(np.asarray(digit_image) > INK_THRESHOLD, int(digit) + 1, 0).astype(np.int64)


def region_masks(height: int = GRID, width: int = GRID) -> dict[str, torch.Tensor]:
    """Boolean (H, W) masks: ``top`` = rows before the middle (earlier in raster order), ``bottom``."""
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    top = rows < (height // 2)
    return {"top": top, "bottom": ~top}


def split_indices(targets: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split, fixed by ``seed`` (not by the run's seed: every run, every
    design sees the same test images, so comparisons between runs are paired per image)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(targets))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=targets)
    return np.sort(train), np.sort(test)


def build_task(img_size: int = 128, test_fraction: float = 0.2, split_seed: int = 0,
               limit: int | None = None) -> tuple[FutureContextTask, FutureContextTask, dict]:
    """(train, test, info). ``img_size`` must be a multiple of 8 (the 8x8 grid is upsampled
    bilinearly; at 128 px a stage-3 token, stride 16, is exactly one digit cell).
    ``limit`` keeps the first N images of each split (tests)."""
    from sklearn.datasets import load_digits

    if img_size < GRID or img_size % GRID:
        raise ValueError(f"img_size must be a positive multiple of {GRID}, got {img_size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    raw = digits.images.astype(np.float32)          # (N, 8, 8) in [0, 16]
    targets = digits.target.astype(np.int64)
    train_idx, test_idx = split_indices(targets, test_fraction, split_seed)

    def make(ids: np.ndarray) -> FutureContextTask:
        if limit is not None:
            ids = ids[:limit]
        grid = torch.from_numpy(raw[ids]).unsqueeze(1) / 16.0
        img = F.interpolate(grid, size=(img_size, img_size), mode="bilinear", align_corners=False)
        img = ((img - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
        labels = torch.from_numpy(np.stack([label_map(raw[i], targets[i]) for i in ids]))
        return FutureContextTask(img, labels, torch.from_numpy(targets[ids]), ids)

    train, test = make(train_idx), make(test_idx)
    digest = hashlib.sha256()
    for part in (train, test):
        digest.update(part.indices.tobytes())
        digest.update(part.labels.numpy().tobytes())
    info = {"dataset": "sklearn digits as segmentation (ink cells carry the digit class)",
            "source": "sklearn.datasets.load_digits (UCI optdigits test set, CC BY 4.0)",
            "img_size": img_size, "grid": GRID, "ink_threshold": INK_THRESHOLD,
            "num_classes": NUM_CLASSES, "train_count": len(train), "test_count": len(test),
            "split_seed": split_seed, "test_fraction": test_fraction, "sha256": digest.hexdigest()}
    return train, test, info
