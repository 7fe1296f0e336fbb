"""``sf_mamba bench``: inference throughput (img/s), MambaVision's protocol done right.

Protocol (docs/training.md §Benchmark):

- ``model.eval()``, ``torch.inference_mode()``, one random input of ``(batch, 3, res, res)`` already on
  the device (no data loader, no host-to-device copies); batch 128 at 224 px by default on CUDA
  (16 on CPU unless ``--batch`` is given);
- CUDA: fp16 autocast and channels_last (model and input) by default, ``cudnn.benchmark`` on; on CPU
  both are off by default and honoured when asked for (``--dtype bfloat16``: CPU autocast);
- ``warmup`` untimed iterations (default 50 on CUDA, 3 on CPU), then one timed window of ``iters``
  iterations bracketed by ``torch.cuda.synchronize()`` (default 200 / 10), repeated ``repeats`` times
  (default 5 / 1); ``throughput = batch * iters / window_seconds``; median, min and max over repeats
  are reported. No per-iteration host timing (the unsynchronised median MambaVision also printed is
  exactly what made its numbers irreproducible, NVlabs/MambaVision#13);
- the batch is never silently reduced: an OOM is an error.

The JSON output records device name, dtype, batch, resolution, channels_last, warm-up/iterations,
TF32 state and package versions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs: `sf_mamba bench --help` stays instant
    import torch
    import torch.nn as nn


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(model: nn.Module, input_size: tuple = (3, 224, 224), batch_size: int = 128,
                       device: Any = None, amp: bool | None = None, amp_dtype: torch.dtype | None = None,
                       channels_last: bool | None = None, warmup: int | None = None, iters: int | None = None,
                       repeats: int = 1) -> dict[str, Any]:
    """Measure img/s of ``model`` (moved to ``device``, switched to eval; restored to train if it was);
    ``amp_dtype`` defaults to float16."""
    import torch

    amp_dtype = torch.float16 if amp_dtype is None else amp_dtype
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    amp = cuda if amp is None else amp  # CPU autocast (bfloat16, float16) is real too: honour it
    channels_last = cuda if channels_last is None else channels_last
    warmup = (50 if cuda else 3) if warmup is None else warmup
    iters = (200 if cuda else 10) if iters is None else iters
    if len(input_size) == 2:
        input_size = (3, *input_size)
    was_training = model.training
    model.eval()
    model.to(device)
    x = torch.randn(batch_size, *input_size, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    windows = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(iters):
                    model(x)
                _sync(device)
                windows.append(time.perf_counter() - t0)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    rates = [batch_size * iters / w for w in windows]
    from sf_mamba.utils.provenance import device_info

    dev = device_info(device)
    return {
        "throughput": statistics.median(rates), "throughput_min": min(rates), "throughput_max": max(rates),
        "throughput_all": rates, "step_time_ms": 1000 * statistics.median(windows) / iters,
        "batch_size": batch_size, "input_size": list(input_size),
        "dtype": str(amp_dtype).replace("torch.", "") if amp else "float32", "amp": amp,
        "channels_last": channels_last, "warmup": warmup, "iters": iters, "repeats": repeats,
        "device": str(device), "device_name": dev.get("device_name"),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "timing": "synchronized wall-clock window over all timed iterations (time.perf_counter)",
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", action="append", required=True, help="timm model name (repeatable)")
    parser.add_argument("--batch", "-b", type=int, default=None, help="batch size (default 128 CUDA, 16 CPU)")
    parser.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                        help="autocast dtype (default float16 on CUDA, float32 = no autocast on CPU)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW contiguous on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 50 CUDA / 3 CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 200 CUDA / 10 CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed windows (default 5 CUDA / 1 CPU)")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of constructor kwargs (e.g. fold)")
    parser.add_argument("--out", default=None, help="write JSON here (atomically) as well as stdout")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.utils.cli import (check_output_path, create_model, fail, parse_json_object, print_json,
                                    write_json_result)
    from sf_mamba.utils.provenance import build_meta

    import torch

    try:
        device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as err:
        fail(f"--device {args.device!r} is not a device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but CUDA is not available")
    kwargs = parse_json_object(args.model_kwargs)
    for option in ("batch", "img_size", "warmup", "iters", "repeats"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "warmup" else 1):
            fail(f"--{option.replace('_', '-')} must be {'>= 0' if option == 'warmup' else 'positive'}, got {value}")
    if args.out:
        check_output_path(args.out)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    dtype = args.dtype or ("float16" if cuda else "float32")
    batch = args.batch or (128 if cuda else 16)
    repeats = args.repeats or (5 if cuda else 1)
    results = []
    for name in args.model:
        model = create_model(name, kwargs)
        r = measure_throughput(model, (3, args.img_size, args.img_size), batch_size=batch, device=device,
                               amp=dtype != "float32", amp_dtype=getattr(torch, dtype),
                               channels_last=cuda and not args.no_channels_last, warmup=args.warmup,
                               iters=args.iters, repeats=repeats)
        r.update(model=name, model_kwargs=kwargs, params=sum(p.numel() for p in model.parameters()))
        results.append(r)
        print(f"{name}: {r['throughput']:.1f} img/s (min {r['throughput_min']:.1f}, max {r['throughput_max']:.1f}) "
              f"batch {batch} {r['dtype']} {args.img_size}px channels_last={r['channels_last']} on "
              f"{r['device_name']}", file=sys.stderr)
        del model
        if cuda:
            torch.cuda.empty_cache()
    out = {"results": results, "meta": build_meta(device=device, extra={"kind": "throughput"})}
    if args.out:
        write_json_result(args.out, out)
    print_json(out)
    return 0
