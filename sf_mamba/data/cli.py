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
    from sf_mamba.utils.cli import check_output_path, fail

    from .builders import build_dataset

    if not 0.0 < args.val_fraction < 1.0:
        fail(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.size < 8:
        fail(f"--size must be >= 8, got {args.size}")
    check_output_path(args.out, directory=True)
    try:
        info = build_dataset(args.name, args.out, size=args.size, val_fraction=args.val_fraction,
                             seed=args.seed, force=args.force)
    except FileExistsError as err:  # another build is there: keep it unless --force
        fail(str(err))
    verb = "built" if info["created"] else "already present (unchanged)"
    print(f"{args.name}: {verb} at {info['path']}: train {info['counts']['train']}, "
          f"val {info['counts']['val']} images, {info['num_classes']} classes")
    print(json.dumps({k: info[k] for k in ("path", "counts", "split_sha256")}))
    return 0


if __name__ == "__main__":
    from sf_mamba.cli import main as _cli_main

    sys.exit(_cli_main(["data", *sys.argv[1:]]))
