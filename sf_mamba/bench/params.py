"""``sf_mamba models``: the registered variants with their hyper-parameters and parameter counts.

Lives outside :mod:`sf_mamba.models` (whose import loads torch and timm) so that ``--help`` is instant."""

from __future__ import annotations

import argparse

from sf_mamba.model_names import SCANS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scan", default="swap", choices=SCANS, help="scan design to count (default: swap)")


def main(args: argparse.Namespace) -> int:
    import timm
    import torch

    from sf_mamba.models import VARIANTS

    print(f"{'model':<16} {'dim':>4} {'depths':<14} {'heads':<14} {'params (M)':>10} {'MambaVision (M)':>16}")
    for variant, spec in VARIANTS.items():
        with torch.device("meta"):  # counting needs neither memory nor initialisation
            model = timm.create_model(f"sf_mamba_{variant}", scan=args.scan)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        published = f"{spec.published_params_m:.1f}" if spec.published_params_m else "-"
        print(f"sf_mamba_{variant:<7} {spec.dim:>4} {str(spec.depths):<14} {str(spec.num_heads):<14} "
              f"{params:10.2f} {published:>16}")
    return 0
