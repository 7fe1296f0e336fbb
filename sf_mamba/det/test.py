"""``sf_mamba det-test``: evaluate a detector checkpoint (COCO box/mask AP) on the test split.

    sf_mamba det-test --config configs/det/<x>.py --checkpoint CKPT --work-dir DIR [--data-root D]
                      [--cfg-options k=v ...]

Writes ``DIR/meta.json`` then ``DIR/metrics.json`` (atomically), like ``det-train``; the flow is
segmentation's (:func:`sf_mamba.openmmlab.runner.run_test`). Exit codes as ``det-train``.
"""

from __future__ import annotations

import argparse

from sf_mamba.openmmlab.runner import DET, add_test_arguments, run_test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_test_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return run_test(args, DET)
