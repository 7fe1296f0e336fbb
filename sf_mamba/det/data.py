"""``sf_mamba det-data``: a small *real-image* instance segmentation set in COCO format, built offline.

Source: ``coins.png`` (303x384 greyscale photograph of 24 coins), shipped inside the scikit-image wheel
(``skimage.data.coins()``, no network). Instance labels come from the image itself, by the region-based
recipe of scikit-image's coins example: Sobel elevation map, watershed from dark (< 30) background and
bright (> 150) coin markers, holes filled, connected components labelled, specks (< 200 px) dropped
(24 coins; :func:`coin_labels`).

Samples are ``size`` x ``size`` crops of the image rescaled by a random factor, under a random flip /
90-degree rotation (``numpy.random.default_rng(seed)``: bit-for-bit deterministic). To keep train and
val apart, train crops come from the columns left of ``split_x`` and val crops from the columns right
of it (a coin cut by that line appears, cut, on one side only). Every coin visible with at least
``min_area`` pixels is an instance: box, RLE mask (pycocotools), area. Output::

    OUT/train/NNNN.png, OUT/val/NNNN.png          RGB uint8 (the grey photo, 3 channels)
    OUT/annotations/instances_{train,val}.json    COCO: images, annotations (RLE), categories [coin]
    OUT/manifest.json                             parameters, counts, sha256 of every file

Atomic and idempotent as ``seg-data`` (:mod:`sf_mamba.openmmlab.smoke_dir`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

CLASSES = ("coin",)
FORMAT_VERSION = 1
SOURCE = "scikit-image wheel skimage/data/coins.png (skimage.data.coins())"


def coin_labels(image: np.ndarray, min_area: int = 200) -> np.ndarray:
    """Instance label map (0 background, 1..n coins) of ``skimage.data.coins()``."""
    from scipy import ndimage as ndi
    from skimage import filters, measure, segmentation

    elevation = filters.sobel(image)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    coins = ndi.binary_fill_holes(segmentation.watershed(elevation, markers) == 2)
    labels = measure.label(coins).astype(np.int32)
    keep = np.bincount(labels.ravel()) >= min_area  # (remove_small_objects' keyword changed in 0.26)
    keep[0] = False
    return measure.label(keep[labels]).astype(np.int32)


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def make_sample(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, size: int,
                x_range: tuple[int, int], scale_range: tuple[float, float]) -> tuple[np.ndarray, list]:
    """One (RGB HxWx3 uint8 image, [instance masks HxW bool]) pair from columns ``x_range``."""
    from skimage.transform import rescale

    scale = float(rng.uniform(*scale_range))
    region = image[:, x_range[0]:x_range[1]]
    region_labels = labels[:, x_range[0]:x_range[1]]
    img = rescale(region.astype(np.float32), scale, order=1, anti_aliasing=True, preserve_range=True)
    lab = rescale(region_labels, scale, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    if min(img.shape) < size:
        raise ValueError(f"crop size {size} exceeds the rescaled region {img.shape}")
    y = int(rng.integers(0, img.shape[0] - size + 1))
    x = int(rng.integers(0, img.shape[1] - size + 1))
    k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
    img = _dihedral(img[y:y + size, x:x + size], k, flip)
    lab = _dihedral(lab[y:y + size, x:x + size], k, flip)
    rgb = np.repeat(np.clip(np.rint(img), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return rgb, [lab == i for i in np.unique(lab) if i != 0]


def coco_annotation(mask: np.ndarray, ann_id: int, image_id: int) -> dict:
    """COCO annotation of one instance mask: compressed RLE (counts as str), tight xywh box, area."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return dict(id=ann_id, image_id=image_id, category_id=1, iscrowd=0, area=int(mask.sum()),
                bbox=[x0, y0, x1 - x0, y1 - y0],
                segmentation=dict(size=[int(s) for s in rle["size"]], counts=rle["counts"].decode("ascii")))


def build(out: str | os.PathLike, n_train: int = 64, n_val: int = 16, size: int = 96, seed: int = 0,
          split_x: int = 240, min_area: int = 64, force: bool = False) -> dict:
    """Materialise the set at ``out`` (atomically, idempotently); returns the manifest."""
    from PIL import Image
    from skimage import data as skdata  # coins.png lies inside the wheel: no fetch

    from sf_mamba.openmmlab.smoke_dir import materialise, sha256

    params = dict(format_version=FORMAT_VERSION, n_train=n_train, n_val=n_val, size=size, seed=seed,
                  split_x=split_x, min_area=min_area, scale_range=[0.7, 1.0])
    image = skdata.coins()
    if not 0 < split_x < image.shape[1]:
        raise ValueError(f"split_x must be in (0, {image.shape[1]}), got {split_x}")
    narrowest = 0.7 * min(split_x, image.shape[1] - split_x, image.shape[0])
    if size < 32 or size > narrowest:
        raise ValueError(f"size must be in [32, {int(narrowest)}] for split_x={split_x} "
                         "(crops of the 0.7x-rescaled halves)")
    if n_train < 1 or n_val < 1:
        raise ValueError("n_train and n_val must be >= 1")

    def write(tmp: Path) -> dict:
        labels = coin_labels(image)
        rng = np.random.default_rng(seed)
        files, stats = {}, {}
        (tmp / "annotations").mkdir()
        for split, n, x_range in (("train", n_train, (0, split_x)), ("val", n_val, (split_x, image.shape[1]))):
            (tmp / split).mkdir()
            images, annotations = [], []
            for i in range(n):
                rgb, masks = make_sample(rng, image, labels, size, x_range, (0.7, 1.0))
                path = tmp / split / f"{i:04d}.png"
                Image.fromarray(rgb, mode="RGB").save(path)
                files[str(path.relative_to(tmp))] = sha256(path)
                images.append(dict(id=i + 1, file_name=f"{i:04d}.png", height=size, width=size))
                for m in masks:
                    if m.sum() >= min_area:
                        annotations.append(coco_annotation(m, len(annotations) + 1, i + 1))
            coco = dict(info=dict(description=f"sf_mamba det-data coins smoke set ({split})", version="1"),
                        licenses=[], images=images, annotations=annotations,
                        categories=[dict(id=1, name="coin", supercategory="coin")])
            ann_path = tmp / "annotations" / f"instances_{split}.json"
            ann_path.write_text(json.dumps(coco) + "\n")
            files[str(ann_path.relative_to(tmp))] = sha256(ann_path)
            stats[split] = dict(images=n, instances=len(annotations),
                                images_without_instances=sum(
                                    1 for im in images if not any(a["image_id"] == im["id"] for a in annotations)))
        return dict(classes=list(CLASSES), stats=stats, coins_in_source=int(labels.max()), files=files,
                    sources=SOURCE)

    return materialise(out, params, write, what="detection set", force=force)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (COCO layout, see docs/detection.md)")
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--size", type=int, default=96, help="square image side in pixels")
    parser.add_argument("--split-x", type=int, default=240,
                        help="train crops left of this column of coins.png, val crops right of it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds another set")


def main(args: argparse.Namespace) -> int:
    try:
        m = build(args.out, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed,
                  split_x=args.split_x, force=args.force)
    except (FileExistsError, ValueError) as err:
        from sf_mamba.utils.cli import fail

        fail(str(err))
    s = m["stats"]
    print(f"det-data: {args.out}: {s['train']['images']} train images ({s['train']['instances']} coins) / "
          f"{s['val']['images']} val images ({s['val']['instances']} coins), {m['params']['size']}px, "
          f"from {m['coins_in_source']} coins in coins.png")
    return 0
