"""``sf_mamba`` command line: one entry point, subcommands implemented in their own modules.

Each subcommand module defines ``add_arguments(parser)`` and ``main(args) -> int``; it is imported
only when its subcommand runs, so a command imports only what it needs (``launch``, ``gather`` and
``report`` never import torch) and optional extras stay optional. Importing a subcommand module and
building its parser must stay light (no torch, timm, matplotlib, pandas, OpenMMLab: tests/test_cli.py):
heavy imports live in the functions that run, so ``sf_mamba <command> --help`` is instant. A subcommand reports bad input with
:func:`sf_mamba.utils.cli.fail`; this entry point prints it as one line and exits 2.
The workflow talks to the package only through these commands and the files they write.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("sf_mamba.bench.params", "list the registered variants with their parameter counts"),
    "data": ("sf_mamba.data.cli", "materialise the small real offline datasets (ImageFolder layout)"),
    "train": ("sf_mamba.train.cli", "train a classifier (timm components, auto-resume, DDP)"),
    "eval": ("sf_mamba.train.evaluate", "evaluate a checkpoint: top-1/top-5"),
    "bench": ("sf_mamba.bench.throughput", "throughput benchmark (img/s), MambaVision protocol done right"),
    "flops": ("sf_mamba.bench.flops", "MACs (MambaVision's convention) and scan FLOPs, labelled"),
    "probe": ("sf_mamba.analysis.probe", "information-flow probe: does a token see later tokens?"),
    "lut": ("sf_mamba_kernels.selective_scan.lut_cli", "build or show the per-GPU fold-factor lookup table"),
    "fold-sweep": ("sf_mamba.bench.fold_sweep", "CPU fold-invariance check and scan timings, fold k vs 1"),
    "launch": ("sf_mamba.launch.submit", "run a job through submitit (Slurm, local or debug) and wait"),
    "gather": ("sf_mamba.report.gather", "collect metrics.json files into one tidy CSV"),
    "report": ("sf_mamba.report.command", "render paper-style tables, plots and the reproduction check"),
    "seg-data": ("sf_mamba.seg.data", "materialise the small real offline segmentation set"),
    "seg-train": ("sf_mamba.seg.train", "train a UperNet segmentor on mmsegmentation"),
    "seg-test": ("sf_mamba.seg.test", "evaluate a segmentor checkpoint: mIoU/mAcc/aAcc"),
    "det-data": ("sf_mamba.det.data", "materialise the small real offline instance set (COCO format)"),
    "det-train": ("sf_mamba.det.train", "train a (Cascade) Mask R-CNN detector on mmdetection"),
    "det-test": ("sf_mamba.det.test", "evaluate a detector checkpoint: COCO box/mask AP"),
    "fc-train": ("sf_mamba.future_context.train", "future-context task (digits as segmentation): train, evaluate by region, probe"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def build_parser(available_only: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sf_mamba", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in SUBCOMMANDS.items():
        if available_only and not _importable(module):
            continue
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser(available_only=True).print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in SUBCOMMANDS:
        build_parser().error(f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"sf_mamba {name}: not available in this installation ({module_name} missing)",
                  file=sys.stderr)
            return 2
        raise
    from sf_mamba.utils.cli import CliError, one_line

    parser = argparse.ArgumentParser(prog=f"sf_mamba {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except CliError as err:
        print(f"sf_mamba {name}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
