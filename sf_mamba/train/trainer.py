"""Training a classifier on timm's components, auto-resuming, DDP-ready: the run, top to bottom.

Python API (used by the submitit launcher)::

    from sf_mamba.train.trainer import load_config, run_training
    cfg = load_config("smoke", ["optim.lr=1e-3"])     # a recipe name or a path
    metrics = run_training(cfg, "runs/smoke")      # idempotent; resumes from runs/smoke/checkpoints/last.pth

``run_training`` checks the config, data and run directory before writing anything, builds the
components (``components``), the data (``data``), restores a checkpoint if there is one
(``run_dir``), then alternates ``loop.train_one_epoch`` and ``loop.validate`` and writes
``metrics.json`` last. Resume semantics: docs/training.md. Throughput and MACs are not measured
here; ``sf_mamba bench`` and ``sf_mamba flops`` do that (the workflow's bench and flops rules).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sf_mamba.train.config import ConfigError, config_hash, load_config  # noqa: F401 (re-export)
from sf_mamba.train.loop import NonFiniteLossError, TrainParts, TrainState, train_one_epoch, validate
from sf_mamba.train.run_dir import RunDirError, RunPaths, check_run_dir  # noqa: F401 (re-export)
from sf_mamba.utils.io import atomic_write_json, atomic_write_yaml

log = logging.getLogger("sf_mamba.train")


def run_training(config: dict, run_dir: str | os.PathLike) -> dict:
    """Train ``config`` into ``run_dir``; resume if a checkpoint exists; return the metrics dict.

    Idempotent: a complete run (``metrics.json`` present) returns its metrics without training.
    Raises ``ConfigError`` / ``DataLayoutError`` / ``RunDirError`` before writing anything when the
    config, model name, data dir or run dir is bad, and ``NonFiniteLossError`` on a NaN/inf loss.
    """
    from sf_mamba.data.builders import check_imagefolder
    from sf_mamba.train.components import check_model_name
    from sf_mamba.train.config import validate as validate_config
    from sf_mamba.train.distributed import cleanup_distributed, setup_distributed

    cfg = validate_config(json.loads(json.dumps(config)))  # deep copy, JSON-only values
    run_dir = Path(run_dir)
    state = check_run_dir(cfg, run_dir)
    if state == "complete":
        metrics = json.loads(RunPaths.of(run_dir).metrics.read_text())
        _setup_logging(None, int(os.environ.get("RANK", "0")) == 0)
        log.info("run %s is complete (metrics.json exists); nothing to do", run_dir)
        return metrics
    if not cfg["data"]["dir"]:
        raise ConfigError("no data dir: set data.dir in the config or pass --data-dir")
    layout = check_imagefolder(cfg["data"]["dir"])
    check_model_name(cfg["model"]["name"])
    dist_info = setup_distributed("cuda" if cfg["train"]["device"] != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        return _train(cfg, RunPaths.of(run_dir), state == "resume", layout, dist_info)
    finally:
        for handler in [h for h in log.handlers if getattr(h, "_sf_file", False)]:
            log.removeHandler(handler)
            handler.close()
        cleanup_distributed()


def _train(cfg: dict, p: RunPaths, resume: bool, layout: dict, dist_info) -> dict:
    from sf_mamba.train import components as build
    from sf_mamba.train import data
    from sf_mamba.train.distributed import barrier
    from sf_mamba.train.run_dir import load_checkpoint, previous_attempts, save_checkpoint, write_history_csv
    from sf_mamba.utils.provenance import build_meta, utc_now

    t_start = time.time()
    is_main = dist_info.is_main
    tc = cfg["train"]
    device = build.pick_device(cfg, dist_info)
    if device.type == "cpu" and tc["cpu_threads"]:
        torch.set_num_threads(int(tc["cpu_threads"]))
    seed = int(tc["seed"])
    data.seed_everything(seed + dist_info.rank)
    n = cfg["data"]["num_classes"]
    num_classes = len(layout["classes"]) if n is None else int(n)

    # ---- components (every check before the run dir is written) ----
    model = build.create_model(cfg, num_classes)
    data_cfg = data.resolve_data(cfg, model)
    amp_dtype = torch.float16 if tc["amp_dtype"] == "float16" else torch.bfloat16
    # Honoured on CPU too (CPU autocast, GradScaler("cpu")), so CPU tests run the GPU recipe's paths.
    use_amp = bool(tc["amp"])
    channels_last = bool(tc["channels_last"])
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if dist_info.distributed and tc["sync_bn"]:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    root = cfg["data"]["dir"]
    train_ds, train_wrapped, sampler, train_loader = data.build_train_loader(cfg, data_cfg, root, dist_info, seed)
    eval_bs = tc["eval_batch_size"] or 2 * tc["batch_size"]
    _, val_loader = data.build_eval_loader(root, data_cfg, eval_bs, cfg["data"]["num_workers"], device,
                                           distributed=dist_info.distributed)
    steps_per_epoch = len(train_loader)
    if tc["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(tc["max_steps_per_epoch"]))
    if steps_per_epoch < 1:
        raise ConfigError(f"train split has {len(train_ds)} images, fewer than one batch of "
                          f"train.batch_size={tc['batch_size']} x {dist_info.world_size} processes")
    optimizer = build.build_optimizer(cfg, model)
    scheduler, num_epochs = build.build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    ema = build.build_ema(cfg, model)
    mixup_fn, criterion = build.build_criterion(cfg, num_classes)

    train_model = model
    if dist_info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def amp_ctx():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    parts = TrainParts(model=model, train_model=train_model, optimizer=optimizer, scheduler=scheduler,
                       scaler=scaler, ema=ema, criterion=criterion, mixup_fn=mixup_fn, device=device,
                       amp_ctx=amp_ctx, channels_last=channels_last, clip_grad=cfg["optim"]["clip_grad"],
                       clip_mode=cfg["optim"]["clip_mode"], mesa=cfg["mesa"], world_size=dist_info.world_size)
    state = TrainState()

    # ---- resume (a damaged checkpoint is refused before anything is written) ----
    resumed_from = None
    if resume:
        data.set_rng_state(load_checkpoint(p.last, cfg, parts, state, dist_info.rank))
        resumed_from = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step}

    # ---- run dir (only after every check passed) ----
    if is_main:
        p.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if not p.config.exists():
            atomic_write_yaml(p.config, cfg)
    barrier()
    _setup_logging(p.text_log, is_main)
    if resume:
        log.info("resuming %s from epoch %d step %d (global step %d)", p.root, state.epoch, state.step_in_epoch,
                 state.global_step)
        state.step_in_epoch = min(state.step_in_epoch, steps_per_epoch)  # e.g. max_steps_per_epoch lowered

    # ---- provenance ----
    meta_extra = {
        "run_dir": str(p.root), "attempts": previous_attempts(p) + 1, "resumed_from": resumed_from,
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
        atomic_write_json(p.meta, meta)
        log.info("model %s: %.3fM params, %d classes, input %s, device %s, world %d, %d steps/epoch x %d epochs",
                 cfg["model"]["name"], build.count_params(model) / 1e6, num_classes, tuple(data_cfg["input_size"]),
                 meta["device"].get("device_name"), dist_info.world_size, steps_per_epoch, num_epochs)

    def checkpoint() -> None:
        rngs = [data.get_rng_state()]
        if dist_info.distributed:
            import torch.distributed as dist
            gathered: list = [None] * dist_info.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if is_main:
            save_checkpoint(p.last, cfg, num_classes, parts, state, rngs)

    progress = tc["progress"]
    show_bar = is_main and (sys.stderr.isatty() if progress == "auto" else bool(progress))

    # ---- epochs ----
    while state.epoch < num_epochs:
        sampler.set_epoch(state.epoch, state.step_in_epoch)
        train_wrapped.set_epoch(state.epoch)
        try:
            row = train_one_epoch(parts, state, train_loader, num_epochs=num_epochs, steps_per_epoch=steps_per_epoch,
                                  ckpt_every_steps=tc["ckpt_every_steps"], save_checkpoint=checkpoint,
                                  log_every_steps=tc["log_every_steps"], show_bar=show_bar, is_main=is_main)
        except NonFiniteLossError as err:
            msg = (f"{err}; stopping. The last good checkpoint {p.last} is kept (not overwritten); lower "
                   f"optim.lr or check the data.")
            if is_main:
                meta.update(status="failed: non-finite loss", failed_utc=utc_now(), error=msg)
                atomic_write_json(p.meta, meta)
            raise NonFiniteLossError(msg) from None
        last_epoch = state.epoch + 1 == num_epochs
        if last_epoch or (tc["eval_every_epochs"] and (state.epoch + 1) % tc["eval_every_epochs"] == 0):
            ev = validate(model, val_loader, device, amp_ctx, show_bar, "val")
            row.update(val_loss=ev["loss"], val_top1=ev["top1"], val_top5=ev["top5"])
            if ema is not None:
                ev_e = validate(ema.module, val_loader, device, amp_ctx, show_bar, "val ema")
                row.update(ema_val_loss=ev_e["loss"], ema_val_top1=ev_e["top1"], ema_val_top5=ev_e["top5"])
            if ev["top1"] > state.best["top1"]:
                state.best = {"top1": ev["top1"], "epoch": state.epoch + 1}
        state.history.append(row)
        if is_main:
            log.info("epoch %d/%d done: %s", state.epoch + 1, num_epochs,
                     " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in row.items() if k != "epoch"))
            write_history_csv(p.log_csv, state.history)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        checkpoint()

    # ---- final metrics (written last, atomically) ----
    final = state.history[-1] if state.history else {}
    if "val_top1" not in final:  # e.g. resumed exactly at the end
        ev = validate(model, val_loader, device, amp_ctx, False)
        final = {**final, "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"]}
    metrics: dict[str, Any] = {
        "model": cfg["model"]["name"], "config_sha256": config_hash(cfg), "seed": seed,
        "top1": final["val_top1"], "top5": final["val_top5"], "loss": final["val_loss"],
        "train_loss": final.get("train_loss"), "epochs": num_epochs, "global_steps": state.global_step,
        "best_top1": state.best["top1"], "best_epoch": state.best["epoch"],
        "params": build.count_params(model), "num_classes": num_classes,
        "input_size": list(data_cfg["input_size"]), "world_size": dist_info.world_size,
    }
    if "ema_val_top1" in final:
        metrics.update(ema_top1=final["ema_val_top1"], ema_top5=final["ema_val_top5"], ema_loss=final["ema_val_loss"])
    if is_main:
        metrics["wall_time_s"] = round(time.time() - t_start, 2)
        meta.update(status="complete", finished_utc=utc_now(), wall_time_s=metrics["wall_time_s"])
        if device.type == "cuda":
            meta["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        atomic_write_json(p.meta, meta)
        atomic_write_json(p.metrics, metrics)
        log.info("finished: top1 %.2f top5 %.2f loss %.4f%s -> %s", metrics["top1"], metrics["top5"],
                 metrics["loss"], f" (ema top1 {metrics['ema_top1']:.2f})" if "ema_top1" in metrics else "",
                 p.metrics)
    barrier()
    return metrics


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
