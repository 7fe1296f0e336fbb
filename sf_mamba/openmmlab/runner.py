"""Shared plumbing of ``sf_mamba {seg,det}-{train,test}``: config, Runner, auto-resume, safe checkpoint
loading, metrics.json, meta.json.

Segmentation (mmseg) and detection (mmdet) runs differ only in a :class:`Task` (metric names and
scale, the package to record, the data command to suggest, the compiled mmcv ops they need); the
train/test flow (:func:`run_train`, :func:`run_test`) is one piece of code for both.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sf_mamba.openmmlab.compat import DETECTION_OPS  # stdlib-only module
from sf_mamba.utils.cli import CliError
from sf_mamba.utils.io import atomic_write_json
from sf_mamba.utils.provenance import build_meta, canonical_json, config_hash

# Keys of the resolved config that say *where*/*how* a run executes, not *what* it computes.
_VOLATILE_KEYS = ("work_dir", "resume", "load_from", "launcher")
_DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


@dataclass(frozen=True)
class Task:
    """What differs between the seg-* and det-* commands."""

    name: str                     # 'seg' | 'det': command prefix and meta.json kind
    metrics: tuple[tuple[str, str, float], ...]  # (metrics.json key, evaluator key, scale to percent)
    package: str                  # distribution recorded in meta.json versions
    data_command: str             # the command that builds the smoke set (for error messages)
    required_ops: tuple[str, ...] = ()  # mmcv._ext ops the models call (checked before anything runs)
    headline: tuple[str, ...] = ()      # metrics printed after a run

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _, _ in self.metrics)


SEG = Task(name="seg", metrics=(("mIoU", "mIoU", 1.0), ("mAcc", "mAcc", 1.0), ("aAcc", "aAcc", 1.0)),
           package="mmsegmentation", data_command="seg-data", headline=("mIoU", "mAcc", "aAcc"))
# mmdet's CocoMetric reports AP as a fraction rounded to 3 decimals: x100 gives percent (0.1 steps).
DET = Task(name="det",
           metrics=tuple((f"{short}_ap{suffix}", f"coco/{kind}_mAP{suffix}", 100.0)
                         for kind, short in (("bbox", "box"), ("segm", "mask"))
                         for suffix in ("", "_50", "_75", "_s", "_m", "_l")),
           package="mmdet", data_command="det-data", headline=("box_ap", "mask_ap"),
           required_ops=DETECTION_OPS)
for _t in (SEG, DET):  # metrics.json keys never clash with the bookkeeping keys
    assert not set(_t.metric_keys) & {"params", "macs", "iter", "kind", "config"}
METRIC_KEYS = SEG.metric_keys  # backwards-compatible name (segmentation)


class _ConfigOverrides(argparse.Action):
    """mmengine's ``DictAction`` (``key=value`` pairs into one dict), imported when an override is
    parsed rather than when the parser is built: ``sf_mamba seg-train --help`` needs no mmengine."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mmengine.config import DictAction

        DictAction(self.option_strings, self.dest, nargs=self.nargs)(parser, namespace, values, option_string)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="mmseg/mmdet config file (configs/seg/*.py, configs/det/*.py)")
    parser.add_argument("--work-dir", required=True, help="run directory: checkpoints, logs, *.json")
    parser.add_argument("--data-root", default=None,
                        help="dataset root; replaces data_root of the train/val/test datasets")
    parser.add_argument("--cfg-options", nargs="+", action=_ConfigOverrides, default=None,
                        help="override config keys, mmengine style: key=value (a.b=1 c=[1,2])")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="distributed launcher (torchrun: pytorch; srun: slurm)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count in metrics.json")


class BadInput(CliError):
    """A user error (missing file, bad config key, wrong data layout): exit 2, one line on stderr."""


def check_ops(task: Task, command: str) -> None:
    """Refuse at start when the task's models call compiled mmcv ops this install lacks (mmcv-lite)."""
    from sf_mamba.openmmlab.compat import INSTALL_HINT, missing_compiled_ops

    missing = missing_compiled_ops(task.required_ops) if task.required_ops else []
    if missing:
        raise BadInput(f"{command} needs mmcv's compiled ops ({', '.join(missing)}), which this environment "
                       f"lacks (mmcv-lite or a broken mmcv._ext); {INSTALL_HINT}")


def load_config(args: argparse.Namespace, task: Task = SEG, command: str | None = None):
    """Config.fromfile + --cfg-options + --data-root + work_dir/launcher; imports custom modules."""
    from sf_mamba.openmmlab.compat import MmcvOpsUnavailable, ensure_mmcv_ops

    check_ops(task, command or f"{task.name}-train")  # first: a refusal is the only line printed
    try:
        ensure_mmcv_ops()
    except MmcvOpsUnavailable as err:
        raise BadInput(str(err)) from err
    from mmengine.config import Config

    if not os.path.isfile(args.config):
        raise BadInput(f"config file {args.config!r} not found")
    if args.data_root:
        check_data_root(args.data_root, task)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    for dataset in _datasets(cfg):  # the config's own roots too: mmengine would end in a traceback
        if dataset.get("data_root"):
            check_data_root(dataset["data_root"], task)
    cfg.work_dir = str(Path(args.work_dir))
    cfg.launcher = args.launcher
    return cfg


def check_data_root(root: str, task: Task = SEG) -> None:
    """The root must exist (its layout is checked by mmseg/mmdet's datasets when they load)."""
    if not os.path.isdir(root):
        raise BadInput(f"data root {root!r} does not exist "
                       f"(build it with `sf_mamba {task.data_command} --out {root}`)")


def build_runner(cfg):
    """``Runner.from_cfg``; a config the model or mmengine rejects is a BadInput."""
    from mmengine.runner import Runner

    try:
        return Runner.from_cfg(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise BadInput(f"invalid config: {type(err).__name__}: {err}") from err


def completed(work_dir: str | os.PathLike, cfg) -> dict | None:
    """metrics.json of a finished *-train run of this very config in ``work_dir``, else None."""
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
    old_root = str(cfg.get("data_root") or "").rstrip("/")
    if "data_root" in cfg:
        cfg.data_root = str(root)  # the parse-time variable too, so config.json tells one story
    # evaluators that read annotations themselves (mmdet's CocoMetric ann_file) follow the data root
    for key in ("val_evaluator", "test_evaluator"):
        evaluators = cfg.get(key)
        for ev in (evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]):
            ann = ev.get("ann_file") if ev is not None and hasattr(ev, "get") else None
            if old_root and isinstance(ann, str) and ann.startswith(old_root + "/"):
                ev["ann_file"] = os.path.join(str(root), ann[len(old_root) + 1:])
    for ds in _datasets(cfg):
        ds["data_root"] = str(root)


def _datasets(cfg):
    """The innermost dataset config of each dataloader (through RepeatDataset etc.)."""
    for key in _DATALOADERS:
        loader = cfg.get(key)
        if loader is None:
            continue
        ds = loader.get("dataset")
        while ds is not None and "dataset" in ds and "data_root" not in ds:
            ds = ds["dataset"]
        if ds is not None:
            yield ds


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


def count_flops(model, input_shape, task: Task | None = None) -> dict:
    """MACs of one forward (``mode='tensor'``) at ``input_shape`` (C, H, W), counted by the package's
    one MAC counter (``sf_mamba.bench.flops.count_flops``: MambaVision's convention, attention and the
    selective scan counted apart as ``attention_macs`` and ``scan_flops``).

    Detectors' tensor forward needs image metadata (the RPN decodes boxes within the image), so for
    ``task=DET`` one data sample describing the unpadded input goes along.
    """
    import torch

    from sf_mamba.bench.flops import count_flops as count_macs

    model = unwrap(model)
    counted_model = model
    if task is not None and task.name == "det":
        from mmdet.structures import DetDataSample

        hw = tuple(int(v) for v in input_shape[1:])
        samples = [DetDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw,
                                               batch_input_shape=hw, scale_factor=(1.0, 1.0)))]

        class _WithSamples(torch.nn.Module):  # the counter calls model(inputs) only
            def __init__(self, detector):
                super().__init__()
                self.detector = detector

            def forward(self, inputs):
                return self.detector(inputs, samples, mode="tensor")

        counted_model = _WithSamples(model)
    counted = count_macs(counted_model, tuple(input_shape), device=next(model.parameters()).device)
    return {"macs": counted["macs"], "attention_macs": counted["attention_macs"],
            "scan_flops": counted["scan_flops"], "macs_convention": counted["convention"],
            "macs_input_shape": list(input_shape)}


def sf_mamba_extras(cfg) -> dict:
    extras = cfg.get("sf_mamba", None) or {}
    return dict(extras)


def write_results(work_dir: str | os.PathLike, cfg, metrics: dict, runner, *, kind: str,
                  no_flops: bool, started: float, extra_meta: dict | None = None, task: Task = SEG) -> dict:
    """meta.json first, metrics.json last (both atomic). Returns the metrics dict written."""
    from mmengine.dist import is_main_process

    if not is_main_process():
        return {}
    import torch

    work_dir = Path(work_dir)
    out: dict[str, Any] = {key: (round(float(metrics[src]) * scale, 6) if _finite(metrics.get(src)) else None)
                           for key, src, scale in task.metrics}
    out["metrics_unit"] = "percent"
    out.update(count_params(runner.model))
    extras = sf_mamba_extras(cfg)
    shape = extras.get("flops_input_shape")
    if no_flops or not shape:
        out.update(macs=None, macs_input_shape=list(shape) if shape else None)
    else:
        try:
            out.update(count_flops(runner.model, tuple(shape), task))
        except Exception as err:  # a MAC count must never lose a finished run
            out.update(macs=None, macs_input_shape=list(shape), macs_error=f"{type(err).__name__}: {err}")
    out["iter"], out["max_iters"] = _iters(runner, kind, (extra_meta or {}).get("checkpoint"))
    out["kind"] = kind
    out["config"] = str(Path(cfg.filename).name) if cfg.filename else None
    # every metric the evaluator returned (per-class lists are not returned by IoUMetric)
    out["all_metrics"] = {k: _number(v) for k, v in metrics.items()}

    resolved = resolved_config(cfg)
    meta = build_meta(config=resolved, seed=_seed(cfg, runner),
                      device=next(unwrap(runner.model).parameters()).device,
                      extra={
                          "kind": f"{task.name}-{kind}",
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
    meta["versions"].setdefault(task.package, _version(task.package))
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

        from sf_mamba.openmmlab.safe_load import mmengine_safe_globals

        with mmengine_safe_globals():
            meta = torch.load(checkpoint, map_location="cpu").get("meta", {})
        return (int(meta["iter"]) if "iter" in meta else None), None
    return None, None


def _finite(value) -> bool:
    """A real metric value (CocoMetric reports -1 for 'no such objects', e.g. no small ones)."""
    import math
    import numbers

    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value >= 0 and isinstance(value, numbers.Real)


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
    from sf_mamba.openmmlab.compat import has_compiled_ops

    return "compiled" if has_compiled_ops() else "stub"


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- the two commands
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if DIR holds checkpoints")
    parser.add_argument("--skip-without-ops", action="store_true",
                        help="(for the workflow) if mmcv's compiled ops are missing, record DIR/metrics.json "
                             "as skipped with the reason and exit 0 instead of refusing")


def write_skipped(work_dir: str | os.PathLike, task: Task, reason: str) -> dict:
    """A metrics.json that says the run was not made and why (the report shows the reason)."""
    out = {"kind": "train", "skipped": reason, **{key: None for key in task.metric_keys}}
    atomic_write_json(Path(work_dir) / "metrics.json", out)
    return out


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="mmengine checkpoint (iter_N.pth)")


def _summary(task: Task, out: dict) -> str:
    return ", ".join(f"{k} {out[k]:.2f}" for k in task.headline if out.get(k) is not None)


def run_train(args: argparse.Namespace, task: Task) -> int:
    """Train with auto-resume, then test on the val split; metrics.json last. See seg/train.py."""
    from sf_mamba.openmmlab.safe_load import mmengine_safe_globals

    command = f"{task.name}-train"
    started = time.time()
    if getattr(args, "skip_without_ops", False):
        try:
            check_ops(task, command)
        except BadInput as err:
            write_skipped(args.work_dir, task, str(err))
            print(f"{command}: skipped: {err}")
            return 0
    # BadInput is the house CliError: the entry point prints it as one line and exits 2
    cfg = load_config(args, task, command)
    cfg.resume = not args.no_resume
    cfg.load_from = None
    done = completed(cfg.work_dir, cfg)
    if done is not None and not args.no_resume:
        print(f"{command}: {cfg.work_dir} already holds a finished run of this config "
              f"({_summary(task, done)}); nothing to do")
        return 0
    runner = build_runner(cfg)
    with mmengine_safe_globals():
        runner.train()
        metrics = runner.test()
    out = write_results(cfg.work_dir, cfg, metrics, runner, kind="train", no_flops=args.no_flops,
                        started=started, task=task)
    if out:
        print(f"{command}: {_summary(task, out)}; params {out['params']:,}; wrote {cfg.work_dir}/metrics.json")
    return 0


def run_test(args: argparse.Namespace, task: Task) -> int:
    """Evaluate one checkpoint (loaded under the safe allow-list); metrics.json last."""
    from sf_mamba.openmmlab.safe_load import mmengine_safe_globals

    command = f"{task.name}-test"
    started = time.time()
    if not os.path.isfile(args.checkpoint):
        raise BadInput(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = load_config(args, task, command)
    cfg.resume = False
    cfg.load_from = os.path.abspath(args.checkpoint)
    runner = build_runner(cfg)
    with mmengine_safe_globals():
        metrics = runner.test()
    out = write_results(cfg.work_dir, cfg, metrics, runner, kind="test", no_flops=args.no_flops,
                        started=started, extra_meta={"checkpoint": os.path.abspath(args.checkpoint)},
                        task=task)
    if out:
        print(f"{command}: {_summary(task, out)}; wrote {cfg.work_dir}/metrics.json")
    return 0
