"""Dataset builders (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sf_mamba.utils.io import atomic_directory

IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".JPEG")
VAL_NAMES = ("val", "validation", "valid", "eval", "evaluation")
MANIFEST = "dataset.json"


class DataLayoutError(ValueError):
    """A data directory that is missing or not in ``train/``+``val/`` class-folder layout."""


def _class_dirs(split_dir: Path) -> dict[str, int]:
    """{class name: image count} for the sub-folders of ``split_dir``."""
    out = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sum(1 for f in d.iterdir() if f.suffix in IMG_EXTS or f.suffix.lower() in IMG_EXTS)
    return out


def check_imagefolder(root: str | os.PathLike, need_train: bool = True, need_val: bool = True) -> dict[str, Any]:
    """Validate ImageNet-style layout; return ``{'train': path, 'val': path, 'classes': [...]}``.

    Raises ``DataLayoutError`` with a message that says what is wrong and what is expected.
    """
    root = Path(root)
    expected = "expected ROOT/train/<class>/*.png and ROOT/val/<class>/*.png (ImageNet folder layout)"
    if not root.is_dir():
        raise DataLayoutError(f"data dir {str(root)!r} does not exist or is not a directory; {expected}")
    info: dict[str, Any] = {"root": str(root)}
    splits = {}
    if need_train:
        if not (root / "train").is_dir():
            raise DataLayoutError(f"data dir {str(root)!r} has no train/ sub-folder; {expected}")
        splits["train"] = root / "train"
    if need_val:
        val = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
        if val is None:
            raise DataLayoutError(f"data dir {str(root)!r} has no val/ (or validation/) sub-folder; {expected}")
        splits["val"] = val
    classes = None
    for name, split_dir in splits.items():
        counts = _class_dirs(split_dir)
        if not counts:
            raise DataLayoutError(f"{str(split_dir)!r} has no class sub-folders; {expected}")
        empty = [c for c, n in counts.items() if n == 0]
        if len(empty) == len(counts):
            raise DataLayoutError(f"{str(split_dir)!r}: class folders hold no images ({', '.join(IMG_EXTS[:4])}...); {expected}")
        if classes is not None and sorted(counts) != classes:
            raise DataLayoutError(f"class folders differ between splits: {classes} vs {sorted(counts)} in {str(split_dir)!r}")
        classes = sorted(counts)
        info[name] = str(split_dir)
        info[f"{name}_count"] = sum(counts.values())
    info["classes"] = classes
    return info


def _digits_images(size: int):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    imgs = []
    for img8 in digits.images:  # (8, 8) float in [0, 16]
        arr = np.clip(np.rint(img8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        imgs.append(pil)
    return imgs, digits.target.astype(int)


def build_digits(out_dir: str | os.PathLike, size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                 force: bool = False) -> dict[str, Any]:
    """Materialise sklearn digits as ``out_dir/{train,val}/<digit>/<index>.png``.

    Deterministic (stratified split with ``seed``), atomic (built in a temp dir then renamed) and
    idempotent: if ``out_dir`` already holds a build with the same parameters it is left untouched.
    A different existing build (or foreign content) raises unless ``force=True``.
    """
    import shutil

    from sklearn.model_selection import train_test_split

    out_dir = Path(out_dir)
    params = {"name": "digits", "size": int(size), "val_fraction": float(val_fraction), "seed": int(seed),
              "source": "sklearn.datasets.load_digits (UCI optdigits test set, CC BY 4.0)"}
    if out_dir.exists():
        manifest = out_dir / MANIFEST
        if manifest.is_file():
            existing = json.loads(manifest.read_text())
            if existing.get("params") == params:
                return {**existing, "path": str(out_dir), "created": False}
        if not force:
            raise FileExistsError(f"{str(out_dir)!r} exists and is not a digits build with these parameters "
                                  f"{params}; pass --force to replace it (or choose another --out)")
    imgs, labels = _digits_images(size)
    idx = list(range(len(labels)))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    digest = hashlib.sha256()
    replacing = out_dir.exists()
    new = out_dir.with_name(out_dir.name + ".new")
    if replacing:
        shutil.rmtree(new, ignore_errors=True)
    with atomic_directory(new if replacing else out_dir) as tmp:
        counts = {}
        for split, ids in (("train", sorted(tr)), ("val", sorted(va))):
            for c in range(10):
                (tmp / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in ids:
                path = tmp / split / str(labels[i]) / f"{i:04d}.png"
                imgs[i].save(path, format="PNG")
                digest.update(f"{split}/{labels[i]}/{i}".encode())
            counts[split] = len(ids)
        manifest = {"params": params, "counts": counts, "num_classes": 10, "split_sha256": digest.hexdigest()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if replacing:  # force: swap the new build in, then drop the old one
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
        os.rename(new, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    return {**manifest, "path": str(out_dir), "created": True}


DATASETS = {"digits": build_digits}


def build_dataset(name: str, out_dir: str | os.PathLike, **kwargs) -> dict[str, Any]:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](out_dir, **kwargs)
