"""``sf_mamba fold-sweep``: time the selective scan with batch folding against no folding.

For every (batch, length, channels) in the grid and every fold factor k, the scan runs on the same
inputs with ``reset_every=length`` (the state is reset at every window boundary, so folding must not
change the result). It records the median wall time over ``--repeats`` runs, the speed-up against
``fold=1`` and the largest absolute difference to the ``fold=1`` output. This is the CPU half of
RQ2: the fold-invariance check and honest CPU timings. GPU speed-ups come from ``sf_mamba bench`` /
``sf_mamba lut`` on a GPU and are never extrapolated from these numbers.

Output: one JSON file ``{"protocol": {...}, "rows": [...], "all_equal": bool}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[49, 196],
                        help="tokens per window (the reset period)")
    parser.add_argument("--channels", type=int, nargs="+", default=[64])
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--backend", default="torch", help="op backend (torch, reference, triton, auto)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="tolerance for the fold-invariance check (fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")


def _inputs(torch, batch, channels, length, d_state, device, generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    u = randn(batch, channels, length)
    delta = randn(batch, channels, length) * 0.5
    A = -torch.rand(channels, d_state, generator=generator).to(device) - 0.1
    B = randn(batch, d_state, length)
    C = randn(batch, d_state, length)
    D = randn(channels)
    z = randn(batch, channels, length)
    delta_bias = randn(channels) * 0.1
    return u, delta, A, B, C, D, z, delta_bias


def _sync(torch, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def sweep(args) -> dict:
    import torch

    from sf_mamba.ops import selective_scan

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("batch_sizes", "lengths", "channels", "folds"):
        if any(v < 1 for v in getattr(args, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be positive integers")
    folds = sorted(set(args.folds) | {1})
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for channels in args.channels:
        for length in args.lengths:
            for batch in args.batch_sizes:
                inputs = _inputs(torch, batch, channels, length, args.d_state, device, generator)
                u, delta, A, B, C, D, z, delta_bias = inputs
                reference_out = None
                base_ms = None
                # k > batch folds the whole batch, the same as k = batch: time it once.
                for k in sorted({min(k, batch) for k in folds}):
                    def call():
                        with torch.inference_mode():
                            return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                                  delta_softplus=True, reset_every=length, fold=k,
                                                  backend=args.backend)

                    for _ in range(args.warmup):
                        out = call()
                    times = []
                    for _ in range(args.repeats):
                        _sync(torch, device)
                        start = time.perf_counter()
                        out = call()
                        _sync(torch, device)
                        times.append((time.perf_counter() - start) * 1e3)
                    ms = statistics.median(times)
                    if k == 1:
                        reference_out, base_ms = out, ms
                    diff = float((out.float() - reference_out.float()).abs().max())
                    rows.append({
                        "batch": batch, "length": length, "channels": channels,
                        "d_state": args.d_state, "fold": k,
                        "time_ms": ms, "time_ms_min": min(times), "time_ms_max": max(times),
                        "speedup_vs_fold1": base_ms / ms if ms > 0 else None,
                        "max_abs_diff": diff, "equal": diff <= args.atol,
                    })
    return {
        "protocol": {
            "backend": args.backend, "device": str(device), "repeats": args.repeats,
            "warmup": args.warmup, "statistic": "median wall time of one scan call",
            "reset_every": "length (one window)", "atol": args.atol, "dtype": "float32",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "rows": rows,
        "all_equal": all(r["equal"] for r in rows),
    }


def main(args: argparse.Namespace) -> int:
    result = sweep(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    bad = [r for r in result["rows"] if not r["equal"]]
    for r in result["rows"]:
        print(f"B={r['batch']:4d} L={r['length']:4d} C={r['channels']:4d} k={r['fold']:2d} "
              f"{r['time_ms']:8.2f} ms  x{r['speedup_vs_fold1']:.2f}  diff={r['max_abs_diff']:.1e}")
    if bad:
        print(f"fold-sweep: {len(bad)} point(s) differ from fold=1 beyond atol={args.atol}")
        return 1
    return 0
