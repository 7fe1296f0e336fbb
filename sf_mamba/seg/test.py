"""``sf_mamba seg-test``: evaluate a segmentor checkpoint (mIoU / mAcc / aAcc) on the test split.

    sf_mamba seg-test --config configs/seg/<x>.py --checkpoint CKPT --work-dir DIR [--data-root D]
                      [--cfg-options k=v ...]

Writes ``DIR/meta.json`` then ``DIR/metrics.json`` (atomically), like ``seg-train``. The checkpoint is
loaded with torch's ``weights_only`` unpickler plus the mmengine allow-list (``safe_load``).
Exit codes as ``seg-train`` (2: bad input, one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import time

from sf_mamba.seg.runtime import (BadInput, add_common_arguments, build_runner, fail, load_config,
                                  write_results)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="mmengine checkpoint (iter_N.pth)")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.seg.safe_load import mmengine_safe_globals

    started = time.time()
    try:
        if not os.path.isfile(args.checkpoint):
            raise BadInput(f"checkpoint {args.checkpoint!r} does not exist")
        cfg = load_config(args)
        cfg.resume = False
        cfg.load_from = os.path.abspath(args.checkpoint)
        runner = build_runner(cfg)
    except BadInput as err:
        return fail("seg-test", err)
    with mmengine_safe_globals():
        metrics = runner.test()
    out = write_results(cfg.work_dir, cfg, metrics, runner, kind="test", no_flops=args.no_flops,
                        started=started, extra_meta={"checkpoint": os.path.abspath(args.checkpoint)})
    if out:
        print("seg-test: " + ", ".join(f"{k} {out[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc")
                                       if out.get(k) is not None)
              + f"; wrote {cfg.work_dir}/metrics.json")
    return 0
