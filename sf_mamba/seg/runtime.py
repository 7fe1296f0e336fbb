"""Shared plumbing of ``sf_mamba seg-train`` / ``seg-test``: config, Runner, metrics.json, meta.json."""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

from sf_mamba.utils.io import atomic_write_json
from sf_mamba.utils.provenance import build_meta, canonical_json, config_hash

# Keys of the resolved config that say *where*/*how* a run executes, not *what* it computes.
_VOLATILE_KEYS = ("work_dir", "resume", "load_from", "launcher")
_DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
METRIC_KEYS = ("mIoU", "mAcc", "aAcc")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    parser.add_argument("--config", required=True, help="mmseg config file (configs/seg/*.py)")
    parser.add_argument("--work-dir", required=True, help="run directory: checkpoints, logs, *.json")
    parser.add_argument("--data-root", default=None,
                        help="dataset root; replaces data_root of the train/val/test datasets")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override config keys, mmengine style: key=value (a.b=1 c=[1,2])")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="distributed launcher (torchrun: pytorch; srun: slurm)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count in metrics.json")


class BadInput(Exception):
    """A user error (missing file, bad config key, wrong data layout): exit 2, one line on stderr."""


def fail(command: str, err: BaseException) -> int:
    import sys

    print(f"sf_mamba {command}: error: {err}", file=sys.stderr)
    return 2


def load_config(args: argparse.Namespace):
    """Config.fromfile + --cfg-options + --data-root + work_dir/launcher; imports custom modules."""
    from sf_mamba.seg.compat import MmcvOpsUnavailable, ensure_mmcv_ops

    try:
        ensure_mmcv_ops()
    except MmcvOpsUnavailable as err:
        raise BadInput(str(err)) from err
    from mmengine.config import Config

    if not os.path.isfile(args.config):
        raise BadInput(f"config file {args.config!r} not found")
    if args.data_root:
        check_data_root(args.data_root)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    cfg.work_dir = str(Path(args.work_dir))
    cfg.launcher = args.launcher
    return cfg


def check_data_root(root: str) -> None:
    """The mmseg layout ``sf_mamba seg-data`` writes (ADE20K roots are checked by mmseg itself)."""
    if not os.path.isdir(root):
        raise BadInput(f"data root {root!r} does not exist (build it with `sf_mamba seg-data --out {root}`)")


def build_runner(cfg):
    """``Runner.from_cfg``; a config the model or mmengine rejects is a BadInput."""
    from mmengine.runner import Runner

    try:
        return Runner.from_cfg(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise BadInput(f"invalid config: {type(err).__name__}: {err}") from err


def completed(work_dir: str | os.PathLike, cfg) -> dict | None:
    """metrics.json of a finished seg-train run of this very config in ``work_dir``, else None."""
    import json

    work_dir = Path(work_dir)
    try:
        metrics = json.loads((work_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("kind") != "train":
        return None
    return metrics if metrics.get("config_sha256") == config_hash(resolved_config(cfg)) else None


def set_data_root(cfg, root: str) -> None:
    if "data_root" in cfg:
        cfg.data_root = str(root)  # the parse-time variable too, so config.json tells one story
    for key in _DATALOADERS:
        loader = cfg.get(key)
        if loader is None:
            continue
        ds = loader.get("dataset")
        while ds is not None and "dataset" in ds and "data_root" not in ds:  # RepeatDataset etc.
            ds = ds["dataset"]
        if ds is not None:
            ds["data_root"] = str(root)


def resolved_config(cfg) -> dict:
    """JSON-able resolved config without the volatile keys (what ``config_sha256`` covers)."""
    import json

    d = copy.deepcopy(cfg.to_dict())
    for key in _VOLATILE_KEYS:
        d.pop(key, None)
    return json.loads(canonical_json(d))


def unwrap(model):
    from mmengine.model import is_model_wrapper

    return model.module if is_model_wrapper(model) else model


def count_params(model) -> dict:
    model = unwrap(model)
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters()) if hasattr(model, "backbone") else None
    return {"params": total, "params_backbone": backbone}


def count_flops(model, input_shape) -> dict:
    """MACs of one forward (``mode='tensor'``) at ``input_shape`` (C, H, W), by mmengine.analysis.

    Convention: mmengine's fvcore-style counter reports one multiply-add as one "flop", i.e. MACs --
    the convention of mmseg's get_flops and of MambaVision's tables; ops it cannot count (the
    selective scan among them) are skipped and listed.
    """
    import torch
    from mmengine.analysis import FlopAnalyzer

    model = unwrap(model)
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs=(x,))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            flops = int(analyzer.total())
            skipped = sorted(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    return {"flops": flops, "flops_input_shape": list(input_shape), "flops_unit": "MACs",
            "flops_uncounted_ops": skipped}


def sf_mamba_extras(cfg) -> dict:
    extras = cfg.get("sf_mamba", None) or {}
    return dict(extras)


def write_results(work_dir: str | os.PathLike, cfg, metrics: dict, runner, *, kind: str,
                  no_flops: bool, started: float, extra_meta: dict | None = None) -> dict:
    """meta.json first, metrics.json last (both atomic). Returns the metrics dict written."""
    from mmengine.dist import is_main_process

    if not is_main_process():
        return {}
    import torch

    work_dir = Path(work_dir)
    out: dict[str, Any] = {k: (float(metrics[k]) if k in metrics else None) for k in METRIC_KEYS}
    out["metrics_unit"] = "percent"
    out.update(count_params(runner.model))
    extras = sf_mamba_extras(cfg)
    shape = extras.get("flops_input_shape")
    if no_flops or not shape:
        out.update(flops=None, flops_input_shape=list(shape) if shape else None, flops_unit="MACs")
    else:
        try:
            out.update(count_flops(runner.model, tuple(shape)))
        except Exception as err:  # a FLOP count must never lose a finished run
            out.update(flops=None, flops_input_shape=list(shape), flops_unit="MACs",
                       flops_error=f"{type(err).__name__}: {err}")
    out["iter"], out["max_iters"] = _iters(runner, kind, (extra_meta or {}).get("checkpoint"))
    out["kind"] = kind
    out["config"] = str(Path(cfg.filename).name) if cfg.filename else None
    # every metric the evaluator returned (per-class lists are not returned by IoUMetric)
    out["all_metrics"] = {k: _number(v) for k, v in metrics.items()}

    resolved = resolved_config(cfg)
    meta = build_meta(config=resolved, seed=_seed(cfg, runner),
                      device=next(unwrap(runner.model).parameters()).device,
                      extra={
                          "kind": f"seg-{kind}",
                          "config_file": str(cfg.filename) if cfg.filename else None,
                          "work_dir": str(work_dir),
                          "wall_s": round(time.time() - started, 3),
                          "world_size": _world_size(),
                          "mmcv_ops": _mmcv_ops(),
                          "peak_cuda_mem_bytes": (torch.cuda.max_memory_allocated()
                                                  if torch.cuda.is_available() else None),
                          **(extra_meta or {}),
                      })
    meta["versions"].setdefault("mmcv-lite", _version("mmcv-lite"))
    meta["versions"].setdefault("mmsegmentation", _version("mmsegmentation"))
    atomic_write_json(work_dir / "config.json", resolved)
    atomic_write_json(work_dir / "meta.json", meta)
    out["config_sha256"] = meta["config_sha256"]
    atomic_write_json(work_dir / "metrics.json", out)  # last: its presence means "run complete"
    return out


def _iters(runner, kind: str, checkpoint: str | None) -> tuple[int | None, int | None]:
    """(iteration reached, max_iters); never builds a train loop (seg-test may lack train data)."""
    from mmengine.runner import BaseLoop

    loop = runner._train_loop
    if kind == "train" and isinstance(loop, BaseLoop):
        return int(loop.iter), int(getattr(loop, "max_iters", 0) or 0) or None
    if checkpoint:
        import torch

        from sf_mamba.seg.safe_load import mmengine_safe_globals

        with mmengine_safe_globals():
            meta = torch.load(checkpoint, map_location="cpu").get("meta", {})
        return (int(meta["iter"]) if "iter" in meta else None), None
    return None, None


def _number(value):
    import numbers

    try:
        import numpy as np

        if isinstance(value, np.generic):
            value = value.item()
    except ImportError:  # pragma: no cover
        pass
    return float(value) if isinstance(value, numbers.Real) else str(value)


def _seed(cfg, runner) -> int | None:
    seed = getattr(runner, "seed", None)
    if seed is None:
        seed = (cfg.get("randomness") or {}).get("seed")
    return None if seed is None else int(seed)


def _world_size() -> int:
    from mmengine.dist import get_world_size

    return int(get_world_size())


def _mmcv_ops() -> str:
    from sf_mamba.seg.compat import has_compiled_ops

    return "compiled" if has_compiled_ops() else "stub"


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
