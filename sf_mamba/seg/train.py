"""``sf_mamba seg-train``: train a segmentor with mmengine's Runner, then test it on val.

    sf_mamba seg-train --config configs/seg/<x>.py --work-dir DIR [--data-root D] [--cfg-options k=v ...]

* Auto-resume: ``resume=True`` with ``load_from=None`` makes the Runner pick up ``DIR/last_checkpoint``
  (requeued / preempted jobs continue where they stopped). If ``DIR/metrics.json`` already records a
  finished run of the same resolved config (same ``config_sha256``), nothing is done (exit 0).
* Checkpoints load under :func:`sf_mamba.seg.safe_load.mmengine_safe_globals` (torch >= 2.6's
  ``weights_only`` default stays on).
* After training: a final test on the val split, then ``DIR/meta.json`` and, last, ``DIR/metrics.json``
  (mIoU/mAcc/aAcc in percent, params, FLOPs), both written atomically.

Exit codes: 0 success or already complete; 2 bad input (config/data/checkpoint missing, a key the
model or mmengine rejects) with one line ``sf_mamba seg-train: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import time

from sf_mamba.seg.runtime import (BadInput, add_common_arguments, build_runner, completed, fail,
                                  load_config, write_results)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if DIR holds checkpoints")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.seg.safe_load import mmengine_safe_globals

    started = time.time()
    try:
        cfg = load_config(args)
        cfg.resume = not args.no_resume
        cfg.load_from = None
        done = completed(cfg.work_dir, cfg)
        if done is not None and not args.no_resume:
            print(f"seg-train: {cfg.work_dir} already holds a finished run of this config "
                  f"(mIoU {done.get('mIoU')}); nothing to do")
            return 0
        runner = build_runner(cfg)
    except BadInput as err:
        return fail("seg-train", err)
    with mmengine_safe_globals():
        runner.train()
        metrics = runner.test()
    out = write_results(cfg.work_dir, cfg, metrics, runner, kind="train", no_flops=args.no_flops,
                        started=started)
    if out:
        print("seg-train: " + ", ".join(f"{k} {out[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc")
                                        if out.get(k) is not None)
              + f"; params {out['params']:,}; wrote {cfg.work_dir}/metrics.json")
    return 0
