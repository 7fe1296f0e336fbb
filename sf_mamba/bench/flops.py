"""``sf_mamba flops``: MACs the way MambaVision counts them, and the selective scan's FLOPs, separately.

Two numbers, never mixed:

- ``macs`` — **MambaVision's "FLOPs" column**: ptflops-style multiply-accumulates of the convs and
  linear layers. ptflops hooks modules, so MambaVision's functional ``scaled_dot_product_attention``
  calls and the selective scan are not in it; neither are they here (MambaVision-T at 224: 4.46 G
  vs the published 4.4 G). Measured with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 ×
  MACs). Element-wise ops, norms and activations are not counted. While counting, every
  ``selective_scan`` call runs with the counter suspended, so matmuls inside a scan backend do not
  leak into ``macs``.
- ``scan_flops`` — the selective scan, counted analytically as **9·L·D·N FLOPs per scan call**
  (the Mamba authors' estimate; B = batch rows, D = scanned channels, L = tokens per sequence,
  N = state size: 9·B·L·D·N in total), from the shapes of each call. Multi-directional scans count one
  call per direction.

``attention_macs`` counts the attention matmuls (QKᵀ and AV) analytically from their shapes, whatever
kernel runs (torch's counter misses CPU's fused kernel); ``macs_with_attention = macs +
attention_macs`` is the complete matmul count (4.56 G for MambaVision-T). ``macs_with_scan = macs +
scan_flops / 2`` expresses the scan in MACs for convenience. Every value is labelled in the output.
All numbers are per image (batch 1) unless ``--batch`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs, so that `sf_mamba flops --help` stays instant
    import torch.nn as nn

CONVENTION = ("macs: conv/linear MACs (MambaVision/ptflops convention: functional attention and the scan "
              "excluded); attention_macs: QK^T and AV MACs, analytic; macs_with_attention = macs + "
              "attention_macs; scan_flops: 9*B*L*D*N per selective_scan call (FLOPs, not MACs)")


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    import torch

    aten = torch.ops.aten
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_cpu_flops
    return mapping


@contextlib.contextmanager
def scan_counter():
    """Patch every ``selective_scan_fn`` reference in loaded ``sf_mamba`` modules with a wrapper that
    records ``9·B·L·D·N`` per call and runs the scan with dispatch modes (the FLOP counter) off.
    Yields a dict ``{'flops': int, 'calls': int}``."""
    from torch.utils._python_dispatch import _disable_current_modes

    import importlib

    original = importlib.import_module("sf_mamba_kernels.selective_scan.interface").selective_scan_fn
    record = {"flops": 0, "calls": 0}

    def counted(u, delta, A, *args, **kwargs):
        batch, channels, length = u.shape
        record["flops"] += 9 * batch * length * channels * A.shape[1]
        record["calls"] += 1
        with _disable_current_modes():
            return original(u, delta, A, *args, **kwargs)

    patched = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("sf_mamba") and mod is not None and getattr(mod, "selective_scan_fn", None) is original:
            patched.append(mod)
            setattr(mod, "selective_scan_fn", counted)
    try:
        yield record
    finally:
        for mod in patched:
            setattr(mod, "selective_scan_fn", original)


@contextlib.contextmanager
def attention_counter():
    """Count ``F.scaled_dot_product_attention`` analytically (torch's SDPA formula: QK^T and AV
    matmuls) whatever kernel the backend picks (fused CPU/flash kernels or the decomposed math path),
    and hide the call from the FLOP counter so it is counted exactly once. Yields ``{'flops', 'calls'}``."""
    import torch.nn.functional as F
    from torch.utils._python_dispatch import _disable_current_modes
    from torch.utils.flop_counter import sdpa_flop_count

    original = F.scaled_dot_product_attention
    record = {"flops": 0, "calls": 0}

    def counted(query, key, value, *args, **kwargs):
        record["flops"] += int(sdpa_flop_count(query.shape, key.shape, value.shape))
        record["calls"] += 1
        with _disable_current_modes():
            return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = counted
    try:
        yield record
    finally:
        F.scaled_dot_product_attention = original


def count_flops(model: nn.Module, input_size: tuple = (3, 224, 224), batch: int = 1,
                device: Any = "cpu") -> dict[str, Any]:
    """Count MACs (scan excluded) and scan FLOPs for one forward pass of ``model`` in eval mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if len(input_size) == 2:
        input_size = (3, *input_size)
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_size, device=device)
    try:
        with torch.no_grad(), scan_counter() as scan, attention_counter() as attention:
            with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
                model(x)
    finally:
        model.train(was_training)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    attn = int(attention["flops"])
    if attn:
        by_op["scaled_dot_product_attention (analytic)"] = attn
    counted = int(counter.get_total_flops()) + attn
    params = sum(p.numel() for p in model.parameters())
    return {
        "macs": (counted - attn) // 2, "attention_macs": attn // 2, "macs_with_attention": counted // 2,
        "counted_flops": counted, "scan_flops": int(scan["flops"]), "scan_calls": int(scan["calls"]),
        "macs_with_scan": (counted - attn) // 2 + int(scan["flops"]) // 2,
        "params": params, "batch": batch, "input_size": list(input_size), "by_op_flops": by_op,
        "convention": CONVENTION,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", action="append", required=True,
                        help="timm model name (repeatable), e.g. sf_mamba_t")
    parser.add_argument("--img-size", type=int, default=None, help="input side (default: pretrained_cfg)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (numbers are for the whole batch)")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of constructor kwargs")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--out", default=None, help="write JSON here (atomically) as well as stdout")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.utils.cli import (check_output_path, create_model, fail, parse_json_object, print_json,
                                    write_json_result)
    from sf_mamba.utils.provenance import build_meta

    kwargs = parse_json_object(args.model_kwargs)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.batch < 1 or (args.img_size is not None and args.img_size < 1):
        fail(f"--batch and --img-size must be positive, got {args.batch} and {args.img_size}")
    if args.out:
        check_output_path(args.out)
    results = []
    for name in args.model:
        model = create_model(name, kwargs)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        if args.img_size:
            size = (size[0], args.img_size, args.img_size)
        r = count_flops(model, tuple(size), batch=args.batch)
        r["model"] = name
        r["model_kwargs"] = kwargs
        results.append(r)
        print(f"{name}: params {r['params'] / 1e6:.2f}M | MACs (MambaVision convention, scan excluded) "
              f"{r['macs'] / 1e9:.3f}G | scan FLOPs (9·B·L·D·N) {r['scan_flops'] / 1e9:.4f}G "
              f"over {r['scan_calls']} scan calls | input {tuple(size)} batch {args.batch}", file=sys.stderr)
    if args.out:
        write_json_result(args.out, {"results": results, "meta": build_meta(extra={"kind": "flops"})})
    print_json(results if len(results) > 1 else results[0])
    return 0
