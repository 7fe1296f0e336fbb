"""``sf_mamba lut build|show``: measure or print the per-GPU fold-factor table (see :mod:`.lut`;
the measurement itself is :func:`.bench.measure_lut_entries`).

``build`` times the Triton scan for every candidate fold k on the current GPU over T/S/B stage-3/4
shapes and writes the fastest k per shape atomically into the table (package data, or ``--out``).
It refuses to run without a CUDA GPU: a table entry is only ever a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys

# .lut and .bench import torch: they load when a command runs, so `sf_mamba lut --help` is instant.
# Shape options left unset (None) take .bench's defaults, listed in their help.
_SHAPE_OPTIONS = ("seq_lens", "aux_tokens", "channels", "batches", "dtypes", "folds")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _dtypes(text: str) -> tuple[str, ...]:
    from . import lut

    try:
        return tuple(lut.dtype_name(v.strip()) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="measure the best fold per shape on this GPU and write the table")
    build.add_argument("--out", default=None, help="table to update (default: the package's fold_lut.json, "
                                                   "or $SF_MAMBA_FOLD_LUT)")
    build.add_argument("--seq-lens", type=_ints, default=None,
                       help="tokens per image before aux tokens (default 49,196)")
    build.add_argument("--aux-tokens", type=int, default=None,
                       help="aux tokens added to every sequence length (default 2)")
    build.add_argument("--channels", type=_ints, default=None,
                       help="SSM channels = half the stage width (default T/S/B stages 3/4)")
    build.add_argument("--batches", type=_ints, default=None)
    build.add_argument("--dtypes", type=_dtypes, default=None)
    build.add_argument("--folds", type=_ints, default=None, help="candidate fold factors")
    build.add_argument("--n-state", type=int, default=8)
    build.add_argument("--mode", choices=("fwd", "fwdbwd"), default="fwd",
                       help="time the forward only (inference) or forward+backward (training)")
    build.add_argument("--rep-ms", type=int, default=20, help="do_bench repetition time per candidate")
    show = sub.add_parser("show", help="print the table")
    show.add_argument("--path", default=None, help="table to print (default: the package's fold_lut.json)")


def _build(args) -> int:
    import torch

    from . import bench, lut

    if not torch.cuda.is_available():
        print("sf_mamba lut build: no CUDA GPU is available on this machine; the fold LUT can only be "
              "measured on a GPU (nothing was written)", file=sys.stderr)
        return 2
    gpu = lut.device_name(torch.cuda.current_device())
    print(f"measuring fold LUT on {gpu} (mode={args.mode})")
    shapes = {name: getattr(args, name) for name in _SHAPE_OPTIONS if getattr(args, name) is not None}
    entries = bench.measure_lut_entries(**shapes, n_state=args.n_state, mode=args.mode, log=print, rep=args.rep_ms)
    path = lut.write_entries(entries, gpu, bench.lut_meta(args.mode, args.n_state), args.out)
    print(f"wrote {len(entries)} entries for {gpu!r} to {path}")
    return 0


def format_table(table: dict) -> str:
    if not table["gpus"]:
        return "fold LUT is empty: every lookup returns k=1 (run `sf_mamba lut build` on a GPU)"
    lines = []
    for gpu, section in table["gpus"].items():
        meta = section.get("meta", {})
        lines.append(f"{gpu}: {len(section.get('entries', []))} entries "
                     f"(measured {meta.get('measured_at', '?')}, torch {meta.get('torch', '?')}, "
                     f"triton {meta.get('triton', '?')}, mode {meta.get('mode', '?')})")
        lines.append(f"  {'dtype':>8} {'L':>4} {'D':>4} {'batch':>5} {'k':>3} {'ms k=1':>9} {'ms best':>9}")
        for e in sorted(section.get("entries", []),
                        key=lambda e: (e["dtype"], e["seq_len"], e["channels"], e["batch"])):
            ms = e.get("ms", {})
            t1, tk = ms.get("1"), ms.get(str(e["fold"]))
            fmt = lambda v: f"{v:9.4f}" if isinstance(v, (int, float)) else f"{'-':>9}"  # noqa: E731
            lines.append(f"  {e['dtype']:>8} {e['seq_len']:>4} {e['channels']:>4} {e['batch']:>5} "
                         f"{e['fold']:>3} {fmt(t1)} {fmt(tk)}")
    return "\n".join(lines)


def main(args) -> int:
    from . import lut

    if args.action == "build":
        return _build(args)
    path = args.path or lut.lut_path()
    if args.path and not os.path.isfile(args.path):
        print(f"sf_mamba lut show: error: --path {args.path!r} not found", file=sys.stderr)
        return 2
    try:
        table = lut.read_table(path)
    except ValueError as err:
        print(f"sf_mamba lut show: error: --path {str(path)!r} is not a fold LUT: {err}", file=sys.stderr)
        return 2
    print(f"# {path}")
    print(format_table(table))
    return 0
