"""``sf_mamba seg-test``: evaluate a segmentor checkpoint (mIoU / mAcc / aAcc) on the test split.

    sf_mamba seg-test --config configs/seg/<x>.py --checkpoint CKPT --work-dir DIR [--data-root D]
                      [--cfg-options k=v ...]

Writes ``DIR/meta.json`` then ``DIR/metrics.json`` (atomically), like ``seg-train``. The checkpoint is
loaded with torch's ``weights_only`` unpickler plus the mmengine allow-list (``safe_load``).
The flow is shared with ``det-test`` (:func:`sf_mamba.openmmlab.runner.run_test`). Exit codes as ``seg-train`` (2: bad input, one line on stderr).
"""

from __future__ import annotations

import argparse

from sf_mamba.openmmlab.runner import SEG, add_test_arguments, run_test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_test_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return run_test(args, SEG)
