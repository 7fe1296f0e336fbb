"""``sf_mamba fc-train``: train one design on the future-context task for one seed, then probe it.

Why a small loop of its own rather than ``sf_mamba train``: that trainer is an ImageFolder
classifier (timm loaders, mixup, EMA, top-1, resume across requeues); this task is dense (a label
map per image, per-region confusion matrices), in memory, and a run takes about a minute on one CPU
core, so requeue/resume machinery buys nothing. It reuses the project's model registry, atomic
writers, provenance (``meta.json``) and the information-flow probe.

Writes into ``--out-dir``: ``metrics.json`` (last, atomically: its presence means the run finished),
``meta.json``, ``per_image.npz`` (per-test-image, per-region confusion matrices, for paired
comparisons), ``last.pth`` (final checkpoint), ``probe.json`` and ``erf.png`` (probe at
initialisation and on the final checkpoint, real test images).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs, so that `sf_mamba fc-train --help` stays instant
    import torch
    import torch.nn as nn

    from sf_mamba.future_context.model import DenseHeadSegmenter

PROBE_KEYS = ("far_future_mass_ratio_mean", "future_mass_ratio_mean", "far_future_mass_ratio",
              "future_mass_ratio", "past_mass_ratio", "self_mass_ratio")


class NonFiniteLoss(RuntimeError):
    pass


def default_window(img_size: int) -> list[int]:
    """One window per hybrid-level map (as MambaVision at 224 px): stages 3/4 are S/16 and S/32."""
    return [8, 8, max(1, img_size // 16), max(1, img_size // 32)]


def seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def probe_backbone(backbone: nn.Module, images: torch.Tensor, seed: int) -> dict[str, Any]:
    from sf_mamba.analysis.probe import probe_model

    return probe_model(backbone, seed=seed, images=images)


def run(model_name: str = "sf_mamba_micro2", model_kwargs: dict | None = None, img_size: int = 128,
        epochs: int = 4, batch_size: int = 32, lr: float = 2e-3, weight_decay: float = 0.05, seed: int = 0,
        limit: int | None = None, probe_images: int = 16, out_dir: str | Path | None = None,
        log=print) -> dict[str, Any]:
    """Train, evaluate, checkpoint, probe. Returns the metrics dict (also written when ``out_dir``)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sf_mamba.future_context.data import NUM_CLASSES, build_task
    from sf_mamba.future_context.metrics import per_image_confusion, region_scores
    from sf_mamba.future_context.model import DenseHeadSegmenter
    from sf_mamba.utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got epochs={epochs}, "
                         f"batch_size={batch_size}, lr={lr}")
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("window_size", default_window(img_size))
    train, test, data_info = build_task(img_size=img_size, limit=limit)
    seed_all(seed)
    model = DenseHeadSegmenter(model_name, NUM_CLASSES, kwargs, out_size=tuple(train.labels.shape[-2:]))
    init_backbone = copy.deepcopy(model.backbone).eval()
    params = sum(p.numel() for p in model.parameters())
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    init_conf = per_image_confusion(predict(model, test.images), test.labels)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)
    step, losses, t0 = 0, [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        running = 0.0
        for i in range(0, len(train), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:   # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, lr, warmup)
            logits = model(train.images[idx])
            loss = F.cross_entropy(logits, train.labels[idx])
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item() * len(idx)
            step += 1
        losses.append(running / len(train))
        log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    train_s = time.perf_counter() - t0

    conf = per_image_confusion(predict(model, test.images), test.labels)
    metrics: dict[str, Any] = {
        **region_scores(conf), "init": region_scores(init_conf),
        "params": params, "params_m": params / 1e6, "backbone_params": backbone_params,
        "train": {"epochs": epochs, "steps": step, "batch_size": batch_size, "lr": lr,
                  "weight_decay": weight_decay, "wall_s": train_s,
                  "images_per_s": epochs * len(train) / train_s, "final_loss": losses[-1],
                  "first_epoch_loss": losses[0], "threads": torch.get_num_threads()},
        "data": data_info, "model_name": model_name, "model_kwargs": json.dumps(kwargs, sort_keys=True),
        "seed": seed,
    }
    if out_dir is None:
        return metrics
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "last.pth"
    atomic_torch_save({"model": model.state_dict(), "model_name": model_name, "model_kwargs": kwargs,
                       "num_classes": NUM_CLASSES, "out_size": list(model.out_size), "seed": seed}, ckpt)
    buf = io.BytesIO()
    np.savez_compressed(buf, confusion=conf.astype(np.int16), init_confusion=init_conf.astype(np.int16),
                        test_indices=test.indices)
    atomic_write_bytes(out / "per_image.npz", buf.getvalue())
    if probe_images:
        images = test.images[:probe_images]
        trained = load_checkpoint(ckpt).backbone.eval()
        entries = []
        for name, backbone in (("init", init_backbone), ("trained", trained)):
            result = probe_backbone(backbone, images, seed)
            result["label"] = f"{kwargs.get('scan', 'swap')} attention={kwargs.get('attention', True)}: {name}"
            entries.append(result)
            metrics.setdefault("probe", {})[name] = {k: result[k] for k in PROBE_KEYS}
        from sf_mamba.analysis.probe import plot_heatmaps

        plot_heatmaps(entries, out / "erf.png")
        atomic_write_json(out / "probe.json", {"entries": entries, "checkpoint": str(ckpt),
                                               "images": f"first {len(images)} test images"})
    from sf_mamba.utils.provenance import build_meta

    atomic_write_json(out / "meta.json", build_meta(config={"model": model_name, "model_kwargs": kwargs,
                                                             "img_size": img_size, "epochs": epochs,
                                                             "batch_size": batch_size, "lr": lr,
                                                             "weight_decay": weight_decay, "limit": limit},
                                                     seed=seed, extra={"kind": "future_context"}))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def load_checkpoint(path: str | Path) -> DenseHeadSegmenter:
    import torch

    from sf_mamba.future_context.model import DenseHeadSegmenter

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = DenseHeadSegmenter(ckpt["model_name"], ckpt["num_classes"], ckpt["model_kwargs"],
                               out_size=ckpt.get("out_size"))
    model.load_state_dict(ckpt["model"])
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default="sf_mamba_micro2", help="timm model name")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of constructor kwargs (scan, attention, ...)")
    parser.add_argument("--img-size", type=int, default=128, help="input side; 128 -> one stage-3 token per digit cell")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each split (tests)")
    parser.add_argument("--probe-images", type=int, default=16, help="test images the probe averages over (0: no probe)")
    parser.add_argument("--out-dir", "-o", required=True)


def main(args: argparse.Namespace) -> int:
    import torch

    from sf_mamba.utils.cli import check_output_path, fail, parse_json_object, print_json

    kwargs = parse_json_object(args.model_kwargs)
    if args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    check_output_path(Path(args.out_dir) / "metrics.json", "--out-dir")
    torch.set_num_threads(args.threads)
    try:
        metrics = run(args.model, kwargs, args.img_size, args.epochs, args.batch_size, args.lr,
                      args.weight_decay, args.seed, args.limit, args.probe_images, args.out_dir,
                      log=lambda m: print(m, file=sys.stderr))
    except (ValueError, TypeError, NonFiniteLoss) as err:
        fail(str(err))
    summary = {k: metrics[k] for k in ("overall", "top", "bottom")}
    if "probe" in metrics:
        summary["probe_far_future_mass"] = {k: v["far_future_mass_ratio_mean"] for k, v in metrics["probe"].items()}
    print_json(summary)
    return 0
