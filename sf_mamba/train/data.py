"""Training data: a resumable order, per-sample seeded augmentation, RNG state and the loaders.

The training order is a pure function of (seed, epoch): ``ResumableSampler`` permutes with a
generator seeded from them and can start after the batches already done, and
``EpochSeededDataset`` transforms sample ``i`` of epoch ``e`` under RNGs seeded from
(seed, e, i). Restarting mid-epoch therefore replays the rest of the epoch identically, whatever
the worker count. ``get_rng_state``/``set_rng_state`` carry the process RNGs through a
checkpoint as plain tensors (``torch.load(weights_only=True)``-safe).
"""

from __future__ import annotations

import random
import signal
from typing import Any

import numpy as np
import torch
import torch.nn as nn

def _mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class EpochSeededDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset; item ``i`` of epoch ``e`` is transformed under RNGs seeded from
    ``(seed, e, i)``. The caller's torch/random/numpy RNG states are left untouched, so the result
    does not depend on worker count, worker assignment or resume position."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = _mix_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                random.seed(s)
                np.random.seed(s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ResumableSampler(torch.utils.data.Sampler):
    """Seeded per-epoch permutation, sharded over ranks, that can start after ``skip`` samples."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, batch_size: int = 1):
        self.n, self.seed, self.rank, self.world = n, int(seed), rank, world_size
        self.batch_size = batch_size
        self.per_rank = (n // world_size)            # drop the ragged tail so every rank has equal work
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip_batches) * self.batch_size

    def _indices(self) -> list[int]:
        g = torch.Generator()
        g.manual_seed(_mix_seed(self.seed, self.epoch, 0xC0FFEE))
        perm = torch.randperm(self.n, generator=g).tolist()
        return perm[self.rank: self.per_rank * self.world: self.world]

    def __iter__(self):
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)



# --------------------------------------------------------------------------------------------
# RNG state <-> tensors (weights_only-safe)
# --------------------------------------------------------------------------------------------

def get_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": None if py_state[2] is None else float(py_state[2]),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

# --------------------------------------------------------------------------------------------
# Transforms and loaders
# --------------------------------------------------------------------------------------------

def resolve_data(cfg: dict, model: nn.Module) -> dict:
    from timm.data import resolve_data_config

    d = cfg["data"]
    args: dict[str, Any] = {}
    if d["input_size"] is not None:
        size = d["input_size"]
        args["input_size"] = (3, size, size) if isinstance(size, int) else tuple(size)
    if d["crop_pct"] is not None:
        args["crop_pct"] = d["crop_pct"]
    if d["interpolation"] is not None:
        args["interpolation"] = d["interpolation"]
    return resolve_data_config(args, model=model)


def _posterize_compat(img, bits_to_keep, **_):
    """Posterize as Pillow <= 11 did it: ``bits_to_keep <= 0`` gives a black image.

    timm's 'PosterizeIncreasing' maps RandAugment magnitude 10 (reached by m9 + mstd0.5 noise) to
    0 bits; Pillow >= 12 rejects that with ValueError and crashes the loader mid-epoch. MambaVision
    trained with Pillow 11.1, where 0 bits masked every pixel to 0; keep that behaviour.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _train_worker_init(_worker_id: int) -> None:
    """DataLoader workers ignore the preemption signal (submitit's SIGUSR2, see the pipeline notes
    §2.4): the main process handles it and the workers must not die first."""
    if hasattr(signal, "SIGUSR2"):
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def install_randaugment_compat() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = _posterize_compat


def build_train_loader(cfg: dict, data_cfg: dict, root: str, dist_info, seed: int):
    from timm.data import create_dataset, create_transform

    install_randaugment_compat()

    a, d = cfg["aug"], cfg["data"]
    ds = create_dataset("", root=root, split="train", is_training=True)
    ds.transform = create_transform(
        data_cfg["input_size"], is_training=True, no_aug=False, scale=tuple(a["scale"]),
        ratio=tuple(a["ratio"]), hflip=a["hflip"], color_jitter=a["color_jitter"] or 0.0,
        auto_augment=a["auto_augment"], interpolation=a["train_interpolation"] or data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], re_prob=a["reprob"], re_mode=a["remode"],
        re_count=a["recount"])
    wrapped = EpochSeededDataset(ds, seed)
    bs = cfg["train"]["batch_size"]
    sampler = ResumableSampler(len(ds), seed, dist_info.rank, dist_info.world_size, bs)
    loader = torch.utils.data.DataLoader(
        wrapped, batch_size=bs, sampler=sampler, num_workers=d["num_workers"], drop_last=True,
        pin_memory=bool(d["pin_memory"]) and torch.cuda.is_available(), persistent_workers=False,
        # own generator: creating an iterator must not draw from the global RNG (resume equality)
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_train_worker_init if d["num_workers"] else None)
    return ds, wrapped, sampler, loader


def build_eval_loader(root: str, data_cfg: dict, batch_size: int, num_workers: int, device,
                      distributed: bool = False, split: str = "validation"):
    from timm.data import create_dataset, create_loader

    ds = create_dataset("", root=root, split=split, is_training=False)
    loader = create_loader(
        ds, input_size=data_cfg["input_size"], batch_size=batch_size, is_training=False,
        use_prefetcher=False, interpolation=data_cfg["interpolation"], mean=data_cfg["mean"],
        std=data_cfg["std"], num_workers=num_workers, distributed=distributed,
        crop_pct=data_cfg["crop_pct"], crop_mode=data_cfg.get("crop_mode"),
        pin_memory=False, device=device, persistent_workers=False)
    return ds, loader
