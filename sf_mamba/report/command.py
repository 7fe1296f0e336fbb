"""``sf_mamba report`` on the command line: the options, and the call into :mod:`.render`.

Separate from :mod:`.render` because that module needs pandas and matplotlib at import (about a
second): ``sf_mamba report --help`` and a bad option answer without them.
"""

from __future__ import annotations

import argparse
import sys

from sf_mamba.report.schema import RQS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True, help="tidy CSV from sf_mamba gather")
    parser.add_argument("--out", required=True, help="output directory")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rq", choices=RQS, help="render one research question")
    group.add_argument("--all", action="store_true", help="every question + reproduction table + index")
    parser.add_argument("--reference", default="configs/reference/published.yaml",
                        help="published numbers (YAML) for the reported-vs-reproduced table")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.report.render import render
    from sf_mamba.utils.cli import check_output_path

    check_output_path(args.out, directory=True)
    try:
        files = render(args.runs, args.out, rq=args.rq, all_=args.all, reference_path=args.reference)
    except (OSError, ValueError) as err:
        print(f"sf_mamba report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {args.out}")
    return 0
