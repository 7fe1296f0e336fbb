"""``sf_mamba det-train``: train a detector (mmdet) with mmengine's Runner, then test it on val.

    sf_mamba det-train --config configs/det/<x>.py --work-dir DIR [--data-root D] [--cfg-options k=v ...]

The flow is segmentation's (:func:`sf_mamba.openmmlab.runner.run_train`): auto-resume from
``DIR/last_checkpoint``, nothing redone when ``DIR/metrics.json`` records a finished run of the same
resolved config, checkpoints loaded under torch's ``weights_only`` unpickler plus the mmengine
allow-list, then ``DIR/meta.json`` and, last, ``DIR/metrics.json`` (COCO box/mask AP in percent from
pycocotools through mmdet's ``CocoMetric``, params, FLOPs), both atomic.

Before anything runs it checks mmcv's compiled ops (NMS, RoIAlign): under mmcv-lite it refuses,
naming the missing ops and the fix. Exit codes: 0 success or already complete; 2 bad input
(config/data/checkpoint missing, a key the model rejects, no compiled ops), one line
``sf_mamba det-train: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse

from sf_mamba.openmmlab.runner import DET, add_train_arguments, run_train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return run_train(args, DET)
