"""``sf_mamba train``: image classification on timm's components, auto-resuming, DDP-ready.

Python API (used by the submitit launcher)::

    from sf_mamba.train.trainer import load_config, run_training
    cfg = load_config("configs/train/smoke.yaml", ["optim.lr=1e-3"])
    metrics = run_training(cfg, "runs/smoke")      # idempotent; resumes from runs/smoke/checkpoints/last.pth

Components: ``timm.data.create_dataset`` / ``create_transform`` / ``resolve_data_config`` /
``create_loader`` (evaluation), ``Mixup``, ``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy``,
``create_optimizer_v2`` (LAMB), ``create_scheduler_v2`` (per-step cosine with warm-up and
cool-down), ``ModelEmaV3``, ``dispatch_clip_grad``, ``torch.amp`` (autocast + GradScaler).

Resume semantics (see docs/training.md): ``checkpoints/last.pth`` is written atomically every
``train.ckpt_every_steps`` optimizer steps and at each epoch end. It holds model, optimizer,
scheduler, AMP scaler and EMA state, epoch, step-in-epoch and global step, the RNG states and the
per-epoch history. The training order is a pure function of (seed, epoch): the sampler permutes
with a generator seeded from them, and each sample's augmentation is seeded from
(seed, epoch, index), so restarting mid-epoch skips exactly the batches already done and replays
the rest identically. ``metrics.json`` is written last; when it exists the run is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sf_mamba.train.config import ConfigError, config_hash, load_config  # noqa: F401 (re-export)
from sf_mamba.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, atomic_write_yaml

log = logging.getLogger("sf_mamba.train")

CKPT_VERSION = 1
CKPT_NAME = "last.pth"
FAULT_ENV = "SF_MAMBA_FAULT_KILL_AFTER_STEP"   # test hook: SIGKILL self after this global step
NAN_FAULT_ENV = "SF_MAMBA_FAULT_NAN_AT_STEP"    # test hook: make the loss of this global step NaN


class RunDirError(RuntimeError):
    """The run directory holds a different config (hash mismatch) or is otherwise unusable."""


class NonFiniteLossError(RuntimeError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# Data: deterministic, resumable order and augmentation
# --------------------------------------------------------------------------------------------

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
# Building blocks
# --------------------------------------------------------------------------------------------

def _import_models() -> None:
    import sf_mamba  # noqa: F401  registers the sf_mamba_* timm models


def check_model_name(name: str) -> None:
    import timm

    _import_models()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8] if "_" in name else []
        raise ConfigError(f"unknown model {name!r} (config key model.name); "
                          f"registered sf_mamba models: {timm.list_models('sf_mamba*')}"
                          + (f"; similar: {close}" if close else ""))


def create_model(cfg: dict, num_classes: int) -> nn.Module:
    import timm

    check_model_name(cfg["model"]["name"])
    kwargs = dict(cfg["model"]["kwargs"])
    if cfg["model"].get("drop_path_rate") is not None:
        kwargs.setdefault("drop_path_rate", cfg["model"]["drop_path_rate"])
    try:
        return timm.create_model(cfg["model"]["name"], pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {cfg['model']['name']!r} rejected model.kwargs {kwargs}: {err}") from err


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


def pick_device(cfg: dict, dist_info) -> torch.device:
    want = cfg["train"]["device"]
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


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


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, amp_ctx=contextlib.nullcontext, progress: bool = False,
             desc: str = "eval") -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy over ``loader`` (summed over DDP ranks)."""
    from sf_mamba.train.distributed import all_reduce_sum

    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # loss_sum, top1, top5, n
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for x, y in it:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp_ctx():
            out = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        topk = out.topk(k, dim=1).indices
        correct = topk.eq(y[:, None])
        stats += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(), correct[:, 0].sum().item(),
                               correct[:, :k].sum().item(), y.numel()], dtype=torch.float64)
    stats = all_reduce_sum(stats.to(device)).cpu() if device.type == "cuda" else all_reduce_sum(stats)
    model.train(was_training)
    n = max(stats[3].item(), 1.0)
    return {"loss": stats[0].item() / n, "top1": 100.0 * stats[1].item() / n,
            "top5": 100.0 * stats[2].item() / n, "count": int(stats[3].item())}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------

def _paths(run_dir: Path) -> dict[str, Path]:
    return {"config": run_dir / "config.yaml", "metrics": run_dir / "metrics.json",
            "meta": run_dir / "meta.json", "log_csv": run_dir / "log.csv", "ckpt_dir": run_dir / "checkpoints",
            "last": run_dir / "checkpoints" / CKPT_NAME, "text_log": run_dir / "train.log"}


def check_run_dir(cfg: dict, run_dir: str | os.PathLike) -> str:
    """Raise ``RunDirError`` if ``run_dir`` holds a different config; return 'complete'|'resume'|'new'."""
    import yaml

    p = _paths(Path(run_dir))
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise RunDirError(f"run dir {str(run_dir)!r} exists and is not a directory")
    if p["config"].is_file():
        try:
            old = yaml.safe_load(p["config"].read_text())
        except yaml.YAMLError as err:
            raise RunDirError(f"{p['config']} is unreadable ({err}); refusing to reuse this run dir") from None
        old_hash, new_hash = config_hash(old), config_hash(cfg)
        if old_hash != new_hash:
            diffs = _diff(old, cfg)
            raise RunDirError(
                f"run dir {str(run_dir)!r} holds another config (hash {old_hash[:12]} != {new_hash[:12]}); "
                f"differences: {'; '.join(diffs[:10]) or 'n/a'}. Use a new run dir (nothing was overwritten).")
    elif p["metrics"].exists() or p["last"].exists():
        raise RunDirError(f"run dir {str(run_dir)!r} has results but no config.yaml; refusing to reuse it")
    if p["metrics"].is_file():
        return "complete"
    return "resume" if p["last"].is_file() else "new"


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _setup_logging(text_log: Path | None, is_main: bool) -> logging.Handler | None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if not any(getattr(h, "_sf_console", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h._sf_console = True  # type: ignore[attr-defined]
        log.addHandler(h)
        log.propagate = False
    if text_log is None or not is_main:
        return None
    fh = logging.FileHandler(text_log)
    fh._sf_file = True  # type: ignore[attr-defined]  (removed by run_training on exit)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    return fh


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def _num_classes(cfg: dict, layout: dict) -> int:
    n = cfg["data"]["num_classes"]
    return len(layout["classes"]) if n is None else int(n)


def run_training(config: dict, run_dir: str | os.PathLike) -> dict:
    """Train ``config`` into ``run_dir``; resume if a checkpoint exists; return the metrics dict.

    Idempotent: a complete run (``metrics.json`` present) returns its metrics without training.
    Raises ``ConfigError`` / ``DataLayoutError`` / ``RunDirError`` before writing anything when the
    config, model name, data dir or run dir is bad, and ``NonFiniteLossError`` on a NaN/inf loss.
    """
    from sf_mamba.data.builders import check_imagefolder
    from sf_mamba.train.config import validate
    from sf_mamba.train.distributed import setup_distributed

    cfg = validate(json.loads(json.dumps(config)))  # deep copy, JSON-only values
    run_dir = Path(run_dir)
    p = _paths(run_dir)
    state = check_run_dir(cfg, run_dir)
    if state == "complete":
        metrics = json.loads(p["metrics"].read_text())
        _setup_logging(None, int(os.environ.get("RANK", "0")) == 0)
        log.info("run %s is complete (metrics.json exists); nothing to do", run_dir)
        return metrics
    if not cfg["data"]["dir"]:
        raise ConfigError("no data dir: set data.dir in the config or pass --data-dir")
    layout = check_imagefolder(cfg["data"]["dir"])
    check_model_name(cfg["model"]["name"])
    dist_info = setup_distributed("cuda" if cfg["train"]["device"] != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        return _train(cfg, run_dir, p, state, layout, dist_info)
    finally:
        from sf_mamba.train.distributed import cleanup_distributed

        for handler in [h for h in log.handlers if getattr(h, "_sf_file", False)]:
            log.removeHandler(handler)
            handler.close()
        cleanup_distributed()


def _train(cfg: dict, run_dir: Path, p: dict, state: str, layout: dict, dist_info) -> dict:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    from sf_mamba.train.distributed import all_reduce_sum, barrier
    from sf_mamba.utils.provenance import build_meta, utc_now

    t_start = time.time()
    is_main = dist_info.is_main
    tc, oc, sc, ac = cfg["train"], cfg["optim"], cfg["sched"], cfg["aug"]
    device = pick_device(cfg, dist_info)
    if device.type == "cpu" and tc["cpu_threads"]:
        torch.set_num_threads(int(tc["cpu_threads"]))
    seed = int(tc["seed"])
    seed_everything(seed + dist_info.rank)
    num_classes = _num_classes(cfg, layout)

    model = create_model(cfg, num_classes)
    data_cfg = resolve_data(cfg, model)
    use_cuda = device.type == "cuda"
    amp_dtype = torch.float16 if tc["amp_dtype"] == "float16" else torch.bfloat16
    use_amp = bool(tc["amp"]) and use_cuda
    channels_last = bool(tc["channels_last"]) and use_cuda
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if dist_info.distributed and tc["sync_bn"]:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    mc = cfg["mesa"]
    root = cfg["data"]["dir"]

    train_ds, train_wrapped, sampler, train_loader = build_train_loader(cfg, data_cfg, root, dist_info, seed)
    eval_bs = tc["eval_batch_size"] or 2 * tc["batch_size"]
    _, val_loader = build_eval_loader(root, data_cfg, eval_bs, cfg["data"]["num_workers"], device,
                                      distributed=dist_info.distributed)
    steps_per_epoch = len(train_loader)
    if tc["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(tc["max_steps_per_epoch"]))
    if steps_per_epoch < 1:
        raise ConfigError(f"train split has {len(train_ds)} images, fewer than one batch of "
                          f"train.batch_size={tc['batch_size']} x {dist_info.world_size} processes")

    try:
        optimizer = create_optimizer_v2(model, opt=oc["opt"], lr=oc["lr"], weight_decay=oc["weight_decay"],
                                        betas=tuple(oc["betas"]), eps=oc["eps"])
    except (ValueError, AssertionError, KeyError, TypeError) as err:
        raise ConfigError(f"optim: cannot build optimizer {oc['opt']!r}: {err}") from err
    try:
        scheduler, num_epochs = create_scheduler_v2(
            optimizer, sched=sc["name"], num_epochs=sc["epochs"], cooldown_epochs=sc["cooldown_epochs"],
            warmup_epochs=sc["warmup_epochs"], warmup_lr=sc["warmup_lr"], min_lr=sc["min_lr"],
            step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    except (ValueError, AssertionError, KeyError, TypeError) as err:
        raise ConfigError(f"sched: cannot build scheduler {sc['name']!r}: {err}") from err
    if scheduler is None:
        raise ConfigError(f"sched.name {sc['name']!r} is not a known timm scheduler")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg["ema"]["decay"]) if cfg["ema"]["enabled"] else None
    if mc["weight"] and ema is None:
        raise ConfigError("mesa.weight > 0 needs ema.enabled (MESA distils from the EMA teacher)")

    mixup_fn = None
    if ac["mixup"] > 0 or ac["cutmix"] > 0:
        mixup_fn = Mixup(mixup_alpha=ac["mixup"], cutmix_alpha=ac["cutmix"], prob=ac["mixup_prob"],
                         switch_prob=ac["mixup_switch_prob"], mode=ac["mixup_mode"],
                         label_smoothing=ac["smoothing"], num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()
    elif ac["smoothing"] > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=ac["smoothing"])
    else:
        criterion = nn.CrossEntropyLoss()

    # ---- run dir (only after every check passed) ----
    if is_main:
        p["ckpt_dir"].mkdir(parents=True, exist_ok=True)
        if not p["config"].exists():
            atomic_write_yaml(p["config"], cfg)
    barrier()
    _setup_logging(p["text_log"], is_main)

    train_model = model
    if dist_info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def amp_ctx():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    # ---- resume ----
    start_epoch, start_step, global_step = 0, 0, 0
    history: list[dict] = []
    best = {"top1": -1.0, "epoch": -1}
    resumed_from = None
    resume_loss = (0.0, 0)
    loss_sum, loss_n = 0.0, 0
    if state == "resume":
        ck = torch.load(p["last"], map_location="cpu", weights_only=True)
        if ck.get("config_sha256") != config_hash(cfg):
            raise RunDirError(f"{p['last']} was written for another config; refusing to resume")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        start_epoch, start_step, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        history, best = list(ck["history"]), dict(ck["best"])
        resume_loss = (float(ck.get("epoch_loss_sum", 0.0)), int(ck.get("epoch_loss_n", 0)))
        rng = ck["rng"][dist_info.rank] if dist_info.rank < len(ck["rng"]) else ck["rng"][0]
        set_rng_state(rng)
        resumed_from = {"epoch": start_epoch, "step_in_epoch": start_step, "global_step": global_step}
        log.info("resuming %s from epoch %d step %d (global step %d)", run_dir, start_epoch, start_step,
                 global_step)
        if start_step >= steps_per_epoch:  # e.g. max_steps_per_epoch lowered; finish the epoch
            start_step = steps_per_epoch

    # ---- provenance ----
    attempts = 1
    if p["meta"].is_file():
        with contextlib.suppress(Exception):
            attempts = int(json.loads(p["meta"].read_text()).get("attempts", 0)) + 1
    meta_extra = {
        "run_dir": str(run_dir), "attempts": attempts, "resumed_from": resumed_from,
        "world_size": dist_info.world_size, "dist_source": dist_info.source, "dist_backend": dist_info.backend,
        "model": cfg["model"]["name"], "num_classes": num_classes, "data_dir": str(root),
        "train_images": len(train_ds), "steps_per_epoch": steps_per_epoch, "epochs_total": num_epochs,
        "amp": use_amp, "amp_dtype": str(amp_dtype).replace("torch.", "") if use_amp else None,
        "channels_last": channels_last, "data_config": {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in data_cfg.items()},
        "status": "running",
    }
    meta = build_meta(config=None, seed=seed, device=device, extra=meta_extra)
    meta["config_sha256"] = config_hash(cfg)
    if is_main:
        atomic_write_json(p["meta"], meta)
        log.info("model %s: %.3fM params, %d classes, input %s, device %s, world %d, %d steps/epoch x %d epochs",
                 cfg["model"]["name"], count_params(model) / 1e6, num_classes, tuple(data_cfg["input_size"]),
                 meta["device"].get("device_name"), dist_info.world_size, steps_per_epoch, num_epochs)

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        rngs = [get_rng_state()]
        if dist_info.distributed:
            import torch.distributed as dist
            gathered: list = [None] * dist_info.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if not is_main:
            return
        ck = {
            "version": CKPT_VERSION, "config_sha256": config_hash(cfg), "model_name": cfg["model"]["name"],
            "num_classes": num_classes, "model_kwargs": dict(cfg["model"]["kwargs"]),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "rng": rngs, "history": history, "best": best, "saved_utc": utc_now(),
            "epoch_loss_sum": loss_sum if step_in_epoch else 0.0, "epoch_loss_n": loss_n if step_in_epoch else 0,
        }
        atomic_torch_save(ck, p["last"])

    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    nan_step = int(os.environ.get(NAN_FAULT_ENV, "0") or 0)
    progress = tc["progress"]
    show_bar = is_main and (sys.stderr.isatty() if progress == "auto" else bool(progress))

    # ---- loop ----
    from tqdm import tqdm

    for epoch in range(start_epoch, num_epochs):
        skip = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip)
        train_wrapped.set_epoch(epoch)
        train_model.train()
        mesa_on = bool(mc["weight"]) and (epoch / num_epochs) > mc["start_ratio"]
        t_epoch = time.time()
        if epoch == start_epoch and skip:  # running mean of the epoch's loss survives a restart
            loss_sum, loss_n = resume_loss
        else:
            loss_sum, loss_n = 0.0, 0
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{num_epochs}",
                   disable=not show_bar, dynamic_ncols=True, leave=False)
        step = skip
        for x, y in train_loader:
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup_fn is not None:
                x, y = mixup_fn(x, y)
            with amp_ctx():
                out = train_model(x)
                loss = criterion(out, y)
                if mesa_on:
                    with torch.no_grad():
                        teacher = ema.module(x)
                    t = mc["temperature"]
                    kl = F.kl_div(F.log_softmax(out.float() / t, dim=1), F.softmax(teacher.float() / t, dim=1),
                                  reduction="batchmean")
                    loss = loss + mc["weight"] * mc["kl_scale"] * kl
            if nan_step and global_step + 1 == nan_step:
                loss = loss * float("nan")
            finite = torch.isfinite(loss.detach()).float()
            if dist_info.distributed:
                finite = all_reduce_sum(finite.clone()) / dist_info.world_size
            if finite.item() < 1.0:
                lr_now = optimizer.param_groups[0]["lr"]
                msg = (f"non-finite loss ({loss.item()}) at epoch {epoch + 1} step {step + 1} (global step "
                       f"{global_step + 1}, lr {lr_now:.3g}); stopping. The last good checkpoint "
                       f"{p['last']} is kept (not overwritten); lower optim.lr or check the data.")
                if is_main:
                    meta.update(status="failed: non-finite loss", failed_utc=utc_now(), error=msg)
                    atomic_write_json(p["meta"], meta)
                raise NonFiniteLossError(msg)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if oc["clip_grad"]:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), value=oc["clip_grad"], mode=oc["clip_mode"])
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            step += 1
            if ema is not None:
                ema.update(model, step=global_step)
            scheduler.step_update(num_updates=global_step)
            loss_sum += loss.item()
            loss_n += 1
            bar.update(1)
            if show_bar:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if is_main and not show_bar and tc["log_every_steps"] and global_step % tc["log_every_steps"] == 0:
                log.info("epoch %d/%d step %d/%d loss %.4f lr %.3e", epoch + 1, num_epochs, step,
                         steps_per_epoch, loss.item(), optimizer.param_groups[0]["lr"])
            if global_step % tc["ckpt_every_steps"] == 0 and step < steps_per_epoch:
                save_checkpoint(epoch, step)
            if fault_step and global_step == fault_step:
                bar.close()
                log.warning("fault injection: SIGKILL after global step %d", global_step)
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        scheduler.step(epoch + 1)
        row: dict[str, Any] = {"epoch": epoch + 1, "global_step": global_step,
                               "lr": optimizer.param_groups[0]["lr"],
                               "train_loss": (loss_sum / loss_n) if loss_n else float("nan"),
                               "epoch_time_s": round(time.time() - t_epoch, 3)}
        last_epoch = epoch + 1 == num_epochs
        if last_epoch or (tc["eval_every_epochs"] and (epoch + 1) % tc["eval_every_epochs"] == 0):
            ev = evaluate(model, val_loader, device, amp_ctx, show_bar, "val")
            row.update(val_loss=ev["loss"], val_top1=ev["top1"], val_top5=ev["top5"])
            if ema is not None:
                ev_e = evaluate(ema.module, val_loader, device, amp_ctx, show_bar, "val ema")
                row.update(ema_val_loss=ev_e["loss"], ema_val_top1=ev_e["top1"], ema_val_top5=ev_e["top5"])
            if ev["top1"] > best["top1"]:
                best = {"top1": ev["top1"], "epoch": epoch + 1}
        history.append(row)
        if is_main:
            log.info("epoch %d/%d done: %s", epoch + 1, num_epochs,
                     " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in row.items() if k != "epoch"))
            _write_csv(p["log_csv"], history)
        save_checkpoint(epoch + 1, 0)

    # ---- final metrics (written last, atomically) ----
    final = history[-1] if history else {}
    if "val_top1" not in final:  # e.g. resumed exactly at the end
        ev = evaluate(model, val_loader, device, amp_ctx, False)
        final = {**final, "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"]}
    metrics: dict[str, Any] = {
        "model": cfg["model"]["name"], "config_sha256": config_hash(cfg), "seed": seed,
        "top1": final["val_top1"], "top5": final["val_top5"], "loss": final["val_loss"],
        "train_loss": final.get("train_loss"), "epochs": num_epochs, "global_steps": global_step,
        "best_top1": best["top1"], "best_epoch": best["epoch"],
        "params": count_params(model), "num_classes": num_classes,
        "input_size": list(data_cfg["input_size"]), "world_size": dist_info.world_size,
    }
    if "ema_val_top1" in final:
        metrics.update(ema_top1=final["ema_val_top1"], ema_top5=final["ema_val_top5"], ema_loss=final["ema_val_loss"])
    if is_main:
        from sf_mamba.bench.flops import count_flops

        try:
            fl = count_flops(model, tuple(data_cfg["input_size"]))
            metrics.update(macs=fl["macs"], macs_g=fl["macs"] / 1e9, scan_flops=fl["scan_flops"],
                           flops_convention=fl["convention"])
        except Exception as err:  # never lose a finished run over an accounting error
            log.warning("MAC counting failed: %s", err)
            metrics.update(macs=None, scan_flops=None)
        if tc["final_bench"]:
            from sf_mamba.bench.throughput import measure_throughput

            bs = 128 if device.type == "cuda" else 16
            tp = measure_throughput(model, tuple(data_cfg["input_size"]), batch_size=bs, device=device,
                                    amp=use_cuda_amp(device), channels_last=device.type == "cuda",
                                    warmup=20 if device.type == "cuda" else 2,
                                    iters=100 if device.type == "cuda" else 5)
            metrics.update(throughput=tp["throughput"], throughput_protocol={
                k: tp[k] for k in ("batch_size", "dtype", "channels_last", "warmup", "iters", "device_name")})
        else:
            metrics.update(throughput=None)
        metrics["wall_time_s"] = round(time.time() - t_start, 2)
        meta.update(status="complete", finished_utc=utc_now(), wall_time_s=metrics["wall_time_s"])
        if device.type == "cuda":
            meta["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        atomic_write_json(p["meta"], meta)
        atomic_write_json(p["metrics"], metrics)
        log.info("finished: top1 %.2f top5 %.2f loss %.4f%s -> %s", metrics["top1"], metrics["top5"],
                 metrics["loss"], f" (ema top1 {metrics['ema_top1']:.2f})" if "ema_top1" in metrics else "",
                 p["metrics"])
    barrier()
    return metrics


def use_cuda_amp(device) -> bool:
    return device.type == "cuda"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None,
                        help="config YAML (a path, or a name in configs/train/: smoke, imagenet_t, ...)")
    parser.add_argument("--run-dir", "-o", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--data-dir", default=None, help="ImageNet-layout data root (sets data.dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="more overrides (same as --set)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.data.builders import DataLayoutError

    overrides = list(args.overrides) + list(args.extra)
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    try:
        cfg = load_config(args.config, overrides)
        if args.print_config:
            import yaml
            print(yaml.safe_dump(cfg, sort_keys=False))
            return 0
        metrics = run_training(cfg, args.run_dir)
    except (ConfigError, DataLayoutError, RunDirError) as err:
        print(f"sf_mamba train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"sf_mamba train: error: {err}", file=sys.stderr)
        return 3
    print(json.dumps({k: metrics.get(k) for k in ("top1", "top5", "loss", "params", "macs", "throughput")}))
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="sf_mamba train")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
