"""``sf_mamba seg-data``: a small *real-texture* binary segmentation set, built offline.

Source images ship inside the scikit-image wheel (``skimage/data/``, no network):

* ``horse.png``  -- CC0 328x400 silhouette (``skimage.data.horse()``; the horse is ``False``);
* ``grass.png``  -- real grass texture, used as the foreground (horse) fill;
* ``brick.png``  -- real texture, used as the background.

The textures are first shrunk by ``texture_scale`` (default 0.5, so a 64 px crop shows a few bricks
or stones). Each sample takes random crops of the two textures, scales/flips/places the horse mask randomly
(``numpy.random.default_rng(seed)``, so the set is bit-for-bit deterministic) and composites
``fg * mask + bg * (1 - mask)``. Output, in mmsegmentation's layout::

    OUT/img_dir/{train,val}/NNNN.png   RGB uint8 (the grey textures, replicated to 3 channels)
    OUT/ann_dir/{train,val}/NNNN.png   uint8 labels: 0 background, 1 horse
    OUT/manifest.json                  parameters, counts, label statistics, sha256 of the files

The set is built in a temporary sibling directory and renamed into place (atomic); if ``OUT`` already
holds a manifest with the same parameters nothing is done (idempotent). A different existing ``OUT``
is an error unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

CLASSES = ("background", "horse")
PALETTE = [[0, 0, 0], [255, 255, 255]]
FOREGROUND = "grass"
BACKGROUNDS = ("brick",)  # gravel is too close to grass for a few CPU minutes of training
FORMAT_VERSION = 1


def _load_sources(texture_scale: float = 1.0) -> dict[str, np.ndarray]:
    from skimage import data as skdata  # local images inside the wheel; none of these fetch

    horse = ~skdata.horse()  # silhouette is False on a True background
    out = {"horse": horse.astype(bool)}
    for name in (FOREGROUND, *BACKGROUNDS):
        img = np.asarray(getattr(skdata, name)(), dtype=np.float32)
        if texture_scale != 1.0:  # shrink the 512x512 textures so a small crop shows more structure
            from skimage.transform import rescale

            img = rescale(img, texture_scale, order=1, anti_aliasing=True, preserve_range=True)
        out[name] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _resize_mask(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(mask.astype(np.float32), (h, w), order=1, anti_aliasing=True) >= 0.5


def _crop(rng: np.random.Generator, tex: np.ndarray, size: int) -> np.ndarray:
    y = int(rng.integers(0, tex.shape[0] - size + 1))
    x = int(rng.integers(0, tex.shape[1] - size + 1))
    patch = tex[y:y + size, x:x + size]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return patch


def make_sample(rng: np.random.Generator, src: dict[str, np.ndarray], size: int, index: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB image HxWx3 uint8, label HxW uint8) pair."""
    fg = _crop(rng, src[FOREGROUND], size).astype(np.float32)
    bg = _crop(rng, src[BACKGROUNDS[index % len(BACKGROUNDS)]], size).astype(np.float32)
    horse = src["horse"]
    scale = rng.uniform(0.45, 0.85) * size / max(horse.shape)
    h, w = max(8, round(horse.shape[0] * scale)), max(8, round(horse.shape[1] * scale))
    small = _resize_mask(horse, h, w)
    if rng.random() < 0.5:
        small = small[:, ::-1]
    # place so that at least ~2/3 of the horse box is inside the image
    y0 = int(rng.integers(-h // 6, size - h + h // 6 + 1))
    x0 = int(rng.integers(-w // 6, size - w + w // 6 + 1))
    mask = np.zeros((size, size), dtype=bool)
    ys, xs = slice(max(y0, 0), min(y0 + h, size)), slice(max(x0, 0), min(x0 + w, size))
    mask[ys, xs] = small[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    img = np.where(mask, fg, bg)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2), mask.astype(np.uint8)


def build(out: str | os.PathLike, n_train: int = 96, n_val: int = 24, size: int = 64, seed: int = 0,
          texture_scale: float = 0.5, force: bool = False) -> dict:
    """Materialise the set at ``out`` (atomically, idempotently); returns the manifest."""
    from PIL import Image

    from sf_mamba.openmmlab.smoke_dir import materialise, sha256

    params = dict(format_version=FORMAT_VERSION, n_train=n_train, n_val=n_val, size=size, seed=seed,
                  texture_scale=texture_scale, foreground=FOREGROUND, backgrounds=list(BACKGROUNDS))
    manifest_path = Path(out) / "manifest.json"
    if not (manifest_path.is_file() and json.loads(manifest_path.read_text()).get("params") == params):
        if size < 32 or size > 512 * texture_scale:
            raise ValueError(f"size must be in [32, {int(512 * texture_scale)}] (texture_scale {texture_scale})")

    def write(tmp: Path) -> dict:
        src = _load_sources(texture_scale)
        rng = np.random.default_rng(seed)
        files, stats = {}, {}
        for split, n in (("train", n_train), ("val", n_val)):
            (tmp / "img_dir" / split).mkdir(parents=True)
            (tmp / "ann_dir" / split).mkdir(parents=True)
            fg_pixels = 0
            for i in range(n):
                img, lab = make_sample(rng, src, size, i)
                ip, ap = tmp / "img_dir" / split / f"{i:04d}.png", tmp / "ann_dir" / split / f"{i:04d}.png"
                Image.fromarray(img, mode="RGB").save(ip)
                Image.fromarray(lab, mode="L").save(ap)
                fg_pixels += int(lab.sum())
                files[str(ip.relative_to(tmp))] = sha256(ip)
                files[str(ap.relative_to(tmp))] = sha256(ap)
            total = n * size * size
            stats[split] = dict(images=n, pixels=total, foreground_fraction=fg_pixels / max(total, 1))
        return dict(classes=list(CLASSES), palette=PALETTE, stats=stats,
                    trivial_all_background=trivial_baseline(stats["val"]["foreground_fraction"]),
                    files=files, sources="scikit-image wheel skimage/data/{horse,grass,brick}.png")

    return materialise(out, params, write, what="segmentation set", force=force)


def trivial_baseline(foreground_fraction: float) -> dict:
    """Metrics (percent, mmseg's IoUMetric convention) of predicting background everywhere."""
    bg = 1.0 - foreground_fraction
    return dict(mIoU=100.0 * bg / 2.0, mAcc=50.0, aAcc=100.0 * bg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (mmseg img_dir/ann_dir layout)")
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=24)
    parser.add_argument("--size", type=int, default=64, help="square image side in pixels")
    parser.add_argument("--texture-scale", type=float, default=0.5,
                        help="resize factor applied to the 512x512 textures before cropping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds another set")


def main(args: argparse.Namespace) -> int:
    try:
        m = build(args.out, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed,
                  texture_scale=args.texture_scale, force=args.force)
    except (FileExistsError, ValueError) as err:
        from sf_mamba.utils.cli import fail

        fail(str(err))
    s = m["stats"]
    print(f"seg-data: {args.out}: {s['train']['images']} train / {s['val']['images']} val images, "
          f"{m['params']['size']}px, val foreground {100 * s['val']['foreground_fraction']:.1f}%, "
          f"all-background mIoU {m['trivial_all_background']['mIoU']:.2f}")
    return 0
