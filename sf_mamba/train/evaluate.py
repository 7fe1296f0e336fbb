"""``sf_mamba eval``: checkpoint → top-1 / top-5 on an ImageNet-layout val split.

Preprocessing follows the model's ``pretrained_cfg`` (resize to ``input_size / crop_pct`` with its
``interpolation``, center crop, mean/std) through ``timm.data.resolve_data_config`` + ``create_loader``,
unless ``--img-size`` / ``--crop-pct`` / ``--interpolation`` are given. For checkpoints written by
``sf_mamba train`` the model name, class count and constructor kwargs come from the checkpoint and
the run's ``config.yaml`` (its ``data.input_size`` etc. are used when present); ``--use-ema`` evaluates
the EMA weights. Plain ``state_dict`` files (or ``{'state_dict': ...}``) need ``--model``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, model_name: str | None = None,
                        use_ema: bool = False, batch_size: int = 128, num_workers: int = 4,
                        img_size: int | None = None, crop_pct: float | None = None,
                        interpolation: str | None = None, device: str | None = None,
                        model_kwargs: dict | None = None, split: str = "validation") -> dict:
    import torch
    import yaml
    from timm.data import resolve_data_config

    from sf_mamba.data.builders import DataLayoutError, check_imagefolder
    from sf_mamba.train.data import build_eval_loader
    from sf_mamba.train.loop import validate as evaluate
    from sf_mamba.utils.cli import create_model, fail, load_checkpoint, shorten

    checkpoint = Path(checkpoint)
    try:
        layout = check_imagefolder(data_dir, need_train=False)
    except DataLayoutError as err:
        fail(f"--data-dir: {err}")
    ck = load_checkpoint(checkpoint)
    data_args: dict = {}
    kwargs = dict(model_kwargs or {})
    if isinstance(ck, dict) and "model" in ck and "config_sha256" in ck:  # sf_mamba train checkpoint
        model_name = model_name or ck["model_name"]
        kwargs = {**ck.get("model_kwargs", {}), **kwargs}
        num_classes = ck["num_classes"]
        if use_ema:
            if not ck.get("ema"):
                fail(f"{checkpoint} has no EMA weights (ema.enabled was false)")
            state = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
        else:
            state = ck["model"]
        cfg_path = checkpoint.parent.parent / "config.yaml"
        if cfg_path.is_file():
            d = (yaml.safe_load(cfg_path.read_text()) or {}).get("data", {})
            if d.get("input_size") is not None:
                s = d["input_size"]
                data_args["input_size"] = (3, s, s) if isinstance(s, int) else tuple(s)
            for key in ("crop_pct", "interpolation"):
                if d.get(key) is not None:
                    data_args[key] = d[key]
    else:
        state = ck.get("state_dict", ck) if isinstance(ck, dict) else ck
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            fail(f"checkpoint {str(checkpoint)!r} holds no state_dict (a dict of tensors), "
                 f"nor is it a checkpoint of sf_mamba train")
        if model_name is None:
            fail("a plain state_dict needs --model")
        head = [v for k, v in state.items() if k.endswith("head.weight")]
        num_classes = head[0].shape[0] if head else len(layout["classes"])
    if use_ema and "config_sha256" not in (ck if isinstance(ck, dict) else {}):
        fail("--use-ema needs a checkpoint written by sf_mamba train")
    model = create_model(model_name, {"num_classes": num_classes, **kwargs})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        fail(f"checkpoint {str(checkpoint)!r} does not fit {model_name}: {shorten(err)}")
    if img_size is not None:
        data_args["input_size"] = (3, img_size, img_size)
    if crop_pct is not None:
        data_args["crop_pct"] = crop_pct
    if interpolation is not None:
        data_args["interpolation"] = interpolation
    data_cfg = resolve_data_config(data_args, model=model)
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        fail(f"--device {device!r} is not a device: {shorten(err)}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but CUDA is not available")
    model.to(dev).eval()
    _, loader = build_eval_loader(str(data_dir), data_cfg, batch_size, num_workers, dev, split=split)
    amp = (lambda: torch.autocast("cuda", dtype=torch.float16)) if dev.type == "cuda" else None
    import contextlib

    res = evaluate(model, loader, dev, amp or contextlib.nullcontext, progress=sys.stderr.isatty())
    return {"checkpoint": str(checkpoint), "model": model_name, "ema": use_ema, "top1": res["top1"],
            "top5": res["top5"], "loss": res["loss"], "count": res["count"],
            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint (run_dir/checkpoints/last.pth or a state_dict file)")
    parser.add_argument("--data-dir", required=True, help="ImageNet-layout root with val/<class>/ images")
    parser.add_argument("--model", default=None, help="timm model name (default: from the checkpoint)")
    parser.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=None, help="override pretrained_cfg input size")
    parser.add_argument("--crop-pct", type=float, default=None, help="override pretrained_cfg crop_pct")
    parser.add_argument("--interpolation", default=None, help="override pretrained_cfg interpolation")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="also write the JSON result here (atomically)")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.utils.cli import check_output_path, write_json_result

    if args.out:
        check_output_path(args.out)
    res = evaluate_checkpoint(args.checkpoint, args.data_dir, args.model, args.use_ema, args.batch_size,
                              args.workers, args.img_size, args.crop_pct, args.interpolation, args.device)
    print(f"{res['model']}{' (EMA)' if res['ema'] else ''}: top-1 {res['top1']:.2f} top-5 {res['top5']:.2f} "
          f"loss {res['loss']:.4f} on {res['count']} images", file=sys.stderr)
    if args.out:
        write_json_result(args.out, res)
    print(json.dumps(res))
    return 0
