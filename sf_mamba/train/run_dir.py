"""The run directory and its checkpoint.

A run directory holds ``config.yaml`` (written first; a restart with another config is refused),
``checkpoints/last.pth`` (written atomically every ``train.ckpt_every_steps`` optimizer steps and
at each epoch end), ``log.csv`` (one row per epoch), ``train.log``, ``meta.json`` (provenance) and,
last, ``metrics.json``: when it exists the run is complete.

The checkpoint holds model, optimizer, scheduler, AMP scaler and EMA state, epoch, step in epoch
and global step, the running loss of the epoch, the RNG states of every rank and the per-epoch
history, all as plain tensors and Python values (``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sf_mamba.train.config import config_hash
from sf_mamba.utils.io import atomic_torch_save, atomic_write_text

CKPT_VERSION = 1
CKPT_NAME = "last.pth"


class RunDirError(RuntimeError):
    """The run directory holds a different config (hash mismatch) or is otherwise unusable."""


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory (``RunPaths.of(run_dir)``)."""

    root: Path
    config: Path                     # config.yaml: the resolved config, written once
    metrics: Path                    # metrics.json: written last; the run is complete when it exists
    meta: Path                       # meta.json: provenance
    log_csv: Path                    # log.csv: one row per epoch
    text_log: Path                   # train.log
    ckpt_dir: Path
    last: Path                       # checkpoints/last.pth: the resume checkpoint

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> RunPaths:
        root = Path(run_dir)
        return cls(root, root / "config.yaml", root / "metrics.json", root / "meta.json", root / "log.csv",
                   root / "train.log", root / "checkpoints", root / "checkpoints" / CKPT_NAME)


def check_run_dir(cfg: dict, run_dir: str | os.PathLike) -> str:
    """Raise ``RunDirError`` if ``run_dir`` holds a different config; return 'complete'|'resume'|'new'."""
    import yaml

    p = RunPaths.of(run_dir)
    if p.root.exists() and not p.root.is_dir():
        raise RunDirError(f"run dir {str(run_dir)!r} exists and is not a directory")
    _check_writable(p.root)
    if p.config.is_file():
        try:
            old = yaml.safe_load(p.config.read_text())
        except yaml.YAMLError as err:
            raise RunDirError(f"{p.config} is unreadable ({err}); refusing to reuse this run dir") from None
        old_hash, new_hash = config_hash(old), config_hash(cfg)
        if old_hash != new_hash:
            diffs = _diff(old, cfg)
            raise RunDirError(
                f"run dir {str(run_dir)!r} holds another config (hash {old_hash[:12]} != {new_hash[:12]}); "
                f"differences: {'; '.join(diffs[:10]) or 'n/a'}. Use a new run dir (nothing was overwritten).")
    elif p.metrics.exists() or p.last.exists():
        raise RunDirError(f"run dir {str(run_dir)!r} has results but no config.yaml; refusing to reuse it")
    if p.metrics.is_file():
        return "complete"
    return "resume" if p.last.is_file() else "new"


def _check_writable(root: Path) -> None:
    """The run dir (or the nearest ancestor that exists) must be a writable directory: found before
    any data is loaded, not when the first checkpoint is due."""
    existing = root.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"run dir {str(root)!r} cannot be created: {str(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"run dir {str(root)!r} is not writable ({str(existing)!r} denies writing)")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def previous_attempts(p: RunPaths) -> int:
    """How many times this run was started before (from meta.json; 0 for a new run)."""
    try:
        return int(json.loads(p.meta.read_text()).get("attempts", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def write_history_csv(path: Path, rows: list[dict]) -> None:
    """The per-epoch log as CSV (columns: the union of the rows' keys, in order of appearance)."""
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


def save_checkpoint(path: Path, cfg: dict, num_classes: int, parts, state, rng_states: list[dict]) -> None:
    """Write ``last.pth`` atomically from the training parts and state (``sf_mamba.train.loop``)."""
    from sf_mamba.utils.provenance import utc_now

    mid_epoch = state.step_in_epoch > 0
    ck = {
        "version": CKPT_VERSION, "config_sha256": config_hash(cfg), "model_name": cfg["model"]["name"],
        "num_classes": num_classes, "model_kwargs": dict(cfg["model"]["kwargs"]),
        "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
        "rng": rng_states, "history": state.history, "best": state.best, "saved_utc": utc_now(),
        "epoch_loss_sum": state.loss_sum if mid_epoch else 0.0, "epoch_loss_n": state.loss_n if mid_epoch else 0,
    }
    atomic_torch_save(ck, path)


def load_checkpoint(path: Path, cfg: dict, parts, state, rank: int) -> dict:
    """Restore ``parts`` and ``state`` from ``last.pth``; return the checkpoint's RNG state for ``rank``."""
    import pickle

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise RunDirError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'empty'}); move it away to start over") from None
    if not isinstance(ck, dict) or ck.get("config_sha256") != config_hash(cfg):
        raise RunDirError(f"{path} was written for another config; refusing to resume")
    parts.model.load_state_dict(ck["model"])
    parts.optimizer.load_state_dict(ck["optimizer"])
    parts.scheduler.load_state_dict(ck["scheduler"])
    parts.scaler.load_state_dict(ck["scaler"])
    if parts.ema is not None and ck.get("ema") is not None:
        parts.ema.load_state_dict(ck["ema"])
    state.epoch, state.step_in_epoch, state.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
    state.history, state.best = list(ck["history"]), dict(ck["best"])
    state.loss_sum, state.loss_n = float(ck.get("epoch_loss_sum", 0.0)), int(ck.get("epoch_loss_n", 0))
    return ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0]
