"""``sf_mamba data``: materialise a small real offline dataset in ImageFolder layout."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default="digits", choices=["digits"],
                        help="dataset to build (digits: sklearn load_digits, 1,797 real 8x8 images)")
    parser.add_argument("--out", required=True, help="output directory (created atomically)")
    parser.add_argument("--size", type=int, default=32, help="output image side in pixels (default 32)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction (stratified)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--force", action="store_true", help="replace an existing, different build")


def main(args: argparse.Namespace) -> int:
    from .builders import build_dataset

    if not 0.0 < args.val_fraction < 1.0:
        print(f"sf_mamba data: --val-fraction must be in (0, 1), got {args.val_fraction}", file=sys.stderr)
        return 2
    if args.size < 8:
        print(f"sf_mamba data: --size must be >= 8, got {args.size}", file=sys.stderr)
        return 2
    try:
        info = build_dataset(args.name, args.out, size=args.size, val_fraction=args.val_fraction,
                             seed=args.seed, force=args.force)
    except FileExistsError as err:
        print(f"sf_mamba data: {err}", file=sys.stderr)
        return 1
    verb = "built" if info["created"] else "already present (unchanged)"
    print(f"{args.name}: {verb} at {info['path']}: train {info['counts']['train']}, "
          f"val {info['counts']['val']} images, {info['num_classes']} classes")
    print(json.dumps({k: info[k] for k in ("path", "counts", "split_sha256")}))
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="sf_mamba data")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
