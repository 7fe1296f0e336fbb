"""``sf_mamba seg-train``: train a segmentor with mmengine's Runner, then test it on val.

    sf_mamba seg-train --config configs/seg/<x>.py --work-dir DIR [--data-root D] [--cfg-options k=v ...]

* Auto-resume: ``resume=True`` with ``load_from=None`` makes the Runner pick up ``DIR/last_checkpoint``
  (requeued / preempted jobs continue where they stopped). If ``DIR/metrics.json`` already records a
  finished run of the same resolved config (same ``config_sha256``), nothing is done (exit 0).
* Checkpoints load under :func:`sf_mamba.openmmlab.safe_load.mmengine_safe_globals` (torch >= 2.6's
  ``weights_only`` default stays on).
* After training: a final test on the val split, then ``DIR/meta.json`` and, last, ``DIR/metrics.json``
  (mIoU/mAcc/aAcc in percent, params, FLOPs), both written atomically.

The flow is shared with ``det-train`` (:func:`sf_mamba.openmmlab.runner.run_train`).

Exit codes: 0 success or already complete; 2 bad input (config/data/checkpoint missing, a key the
model or mmengine rejects) with one line ``sf_mamba seg-train: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse

from sf_mamba.openmmlab.runner import SEG, add_train_arguments, run_train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return run_train(args, SEG)
