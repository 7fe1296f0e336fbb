"""``sf_mamba fold-sweep``: time the selective scan with batch folding against no folding.

For every (batch, length, channels) in the grid and every fold factor k, the scan runs on the same
inputs with ``reset_every=length`` (the state is reset at every window boundary, so folding must not
change the result). It records the median wall time over ``--repeats`` runs, the speed-up against
``fold=1``, the largest absolute difference to the ``fold=1`` output, and beside it the speed-up
the static model of the Triton kernel predicts on sm_90 (labelled as such; never a measurement).
This is the CPU half of RQ2: the fold-invariance check and honest CPU timings. GPU speed-ups come
from ``sf_mamba bench`` / ``sf_mamba lut`` / ``kernels/device_check.py`` on a GPU and are never
extrapolated from these numbers. The loop itself is ``sf_mamba_kernels.selective_scan.bench.fold_sweep``.

Output: one JSON file ``{"protocol": {...}, "rows": [...], "all_equal": bool}``.
"""

from __future__ import annotations

import argparse
import platform


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


def sweep(args) -> dict:
    import torch

    from sf_mamba_kernels.selective_scan import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("batch_sizes", "lengths", "channels", "folds"):
        if any(v < 1 for v in getattr(args, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be positive integers")
    device = torch.device(args.device)
    rows = bench.fold_sweep(args.batch_sizes, args.lengths, args.channels, args.folds, d_state=args.d_state,
                            repeats=args.repeats, warmup=args.warmup, backend=args.backend, device=device,
                            atol=args.atol, seed=args.seed)
    return {
        "protocol": {
            "backend": args.backend, "device": str(device), "repeats": args.repeats,
            "warmup": args.warmup, "statistic": "median wall time of one scan call",
            "reset_every": "length (one window)", "atol": args.atol, "dtype": "float32",
            "inputs": "mamba_ssm's test law (sf_mamba_kernels.selective_scan.testing)",
            "predicted": "predicted_speedup_static_sm90: static model of the Triton kernel on sm_90, not measured",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "rows": rows,
        "all_equal": all(r["equal"] for r in rows),
    }


def main(args: argparse.Namespace) -> int:
    from sf_mamba.utils.cli import check_output_path, fail, write_json_result

    check_output_path(args.out)
    try:
        result = sweep(args)
    except ValueError as err:  # an option the sweep or the op rejects (sizes, --backend, --device)
        fail(str(err))
    write_json_result(args.out, result)
    bad = [r for r in result["rows"] if not r["equal"]]
    for r in result["rows"]:
        predicted = r["predicted_speedup_static_sm90"]
        print(f"B={r['batch']:4d} L={r['length']:4d} C={r['channels']:4d} k={r['fold']:2d} "
              f"{r['time_ms']:8.2f} ms  x{r['speedup_vs_fold1']:.2f}  diff={r['max_abs_diff']:.1e}  "
              f"predicted (static, sm_90) {'-' if predicted is None else f'x{predicted:.2f}'}")
    if bad:
        print(f"fold-sweep: {len(bad)} point(s) differ from fold=1 beyond atol={args.atol}")
        return 1
    return 0
