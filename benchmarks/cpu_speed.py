"""CPU speed benchmark (issue: sf_mamba_t >= 0.8x convnext_tiny in eval on CPU).

Measures side by side, in one run, interleaved so that machine load hits every model alike:
  * img/s at 224 px, eval mode, inference_mode, of sf_mamba_t (swap and uni) and timm's convnext_tiny;
  * the fast PyTorch scan ('torch' backend) vs the sequential reference on sf_mamba_t's shapes,
    forward (inference) and forward+backward (training).
Prints a table and the ratios; ``--json PATH`` also writes them. Not a test: timings are never asserted.

    python benchmarks/cpu_speed.py [--batch 8] [--rounds 5] [--threads N] [--json results/cpu_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import timm
import torch

import sf_mamba  # noqa: F401  (registers the models)
from sf_mamba_kernels.selective_scan import selective_scan_fn
from sf_mamba_kernels.selective_scan.bench import wall_times_ms
from sf_mamba_kernels.selective_scan.testing import make_scan_inputs


def time_call(fn, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    return statistics.median(wall_times_ms(fn, repeats, warmup=1)) / 1e3


def model_throughput(names_kwargs: dict, batch: int, rounds: int) -> dict[str, float]:
    x = torch.randn(batch, 3, 224, 224)
    models = {label: timm.create_model(name, **kw).eval() for label, (name, kw) in names_kwargs.items()}
    seconds = {label: [] for label in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up (allocator, oneDNN primitive caches)
            model(x)
        for _ in range(rounds):  # interleave so load spikes hit every model alike
            for label, model in models.items():
                start = time.perf_counter()
                model(x)
                seconds[label].append(time.perf_counter() - start)
    return {label: batch / statistics.median(s) for label, s in seconds.items()}


def scan_speed(batch: int, repeats: int) -> list[dict]:
    """Fast vs reference scan on sf_mamba_t's stage-3/4 shapes (SSM width = half the stage width),
    forward only (inference) and forward+backward (training)."""
    rows = []
    for stage, channels, length in (("stage3", 160, 196 + 2), ("stage4", 320, 49 + 2)):
        inputs = make_scan_inputs(batch, channels, 8, length, has_z=False, has_bias=False)
        inputs = {k: v for k, v in inputs.items() if v is not None}
        row = dict(shape=f"{stage} B={batch} D={channels} L={length} N=8")
        for backend in ("reference", "torch"):
            with torch.inference_mode():
                row[f"{backend}_fwd_ms"] = 1e3 * time_call(
                    lambda: selective_scan_fn(**inputs, delta_softplus=True, backend=backend), repeats)
            leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
            row[f"{backend}_fwd_bwd_ms"] = 1e3 * time_call(
                lambda: selective_scan_fn(**leaves, delta_softplus=True, backend=backend).sum().backward(),
                max(1, repeats // 2))
        row["speedup_fwd"] = row["reference_fwd_ms"] / row["torch_fwd_ms"]
        row["speedup_fwd_bwd"] = row["reference_fwd_bwd_ms"] / row["torch_fwd_bwd_ms"]
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    throughput = model_throughput({
        "sf_mamba_t (swap)": ("sf_mamba_t", dict(scan="swap")),
        "sf_mamba_t (uni)": ("sf_mamba_t", dict(scan="uni")),
        "convnext_tiny": ("convnext_tiny", {}),
    }, args.batch, args.rounds)
    scans = scan_speed(args.batch, args.rounds)

    base = throughput["convnext_tiny"]
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, 224 px, eval, {args.rounds} rounds (median)")
    print(f"{'model':<20} {'img/s':>8} {'vs convnext_tiny':>17}")
    for label, value in throughput.items():
        print(f"{label:<20} {value:8.2f} {value / base:16.2f}x")
    print(f"{'scan shape':<32} {'ref fwd':>8} {'fast fwd':>9} {'ratio':>6} {'ref fwd+bwd':>12} {'fast fwd+bwd':>13} {'ratio':>6}  (ms)")
    for row in scans:
        print(f"{row['shape']:<32} {row['reference_fwd_ms']:8.1f} {row['torch_fwd_ms']:9.1f} "
              f"{row['speedup_fwd']:5.1f}x {row['reference_fwd_bwd_ms']:12.1f} {row['torch_fwd_bwd_ms']:13.1f} "
              f"{row['speedup_fwd_bwd']:5.1f}x")
    if args.json:
        result = dict(machine=platform.machine(), processor=platform.processor(), cpu_count=os.cpu_count(),
                      threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
                      batch=args.batch, rounds=args.rounds, img_per_s=throughput,
                      ratio_vs_convnext_tiny={k: v / base for k, v in throughput.items()}, scan=scans)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
