"""``sf_mamba train``: the command line of the trainer (``sf_mamba.train.trainer.run_training``).

Exit status: 0 trained (or already complete), 2 bad config / data / run dir (one line on stderr,
nothing written), 3 the loss became NaN/inf (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None,
                        help="config YAML: a path, or the name of a recipe shipped in sf_mamba/configs/train/ "
                             "(smoke, imagenet_t, ...)")
    parser.add_argument("--run-dir", "-o", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--data-dir", default=None, help="ImageNet-layout data root (sets data.dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="more overrides (same as --set)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.data.builders import DataLayoutError
    from sf_mamba.train.trainer import ConfigError, NonFiniteLossError, RunDirError, load_config, run_training

    overrides = list(args.overrides) + list(args.extra)
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    try:
        cfg = load_config(args.config, overrides)
        if args.print_config:
            import yaml
            print(yaml.safe_dump(cfg, sort_keys=False))
            return 0
        metrics = run_training(cfg, args.run_dir)
    except (ConfigError, DataLayoutError, RunDirError) as err:
        print(f"sf_mamba train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"sf_mamba train: error: {err}", file=sys.stderr)
        return 3
    print(json.dumps({k: metrics.get(k) for k in ("top1", "top5", "loss", "params")}))
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="sf_mamba train")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
