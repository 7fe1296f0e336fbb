"""``sf_mamba probe``: does a stage-3 token see tokens *later* in the scan order? (the paper's RQ3)

For a model, feed inputs through the stem and stages 1–2 to get the stage-3 input map ``X`` (B, C, H, W),
then run stage 3 alone (``model.stages[2]``, which returns the pre-downsample map) on a leaf copy of
``X`` and back-propagate from one output token ``q``: ``s = sum_c Y[b, c, q]``. The gradient mass of
input token ``t`` is ``m_t = sum_c |dS/dX[b, c, t]|`` (averaged over the batch). With raster order
``r(t) = row * W + col``:

- ``future_mass_ratio = sum_{r(t) > r(q)} m_t / sum_t m_t`` — mass on tokens *after* q in the scan;
- ``past_mass_ratio`` and ``self_mass_ratio`` likewise.

A purely causal scan would give 0. MambaVision's mixer has a symmetric (non-causal) 3-tap conv per
Mamba block, so a unidirectional ``scan='uni'`` model still sees a few raster positions ahead; the
``swap`` design routes the aggregate of the whole window from the tail back to the head and so sees
*all* future tokens. The clean comparison is ``attention=False`` (self-attention blocks see
everything by construction); both settings are reported. The query defaults to the window centre;
``future_mass_ratio_mean`` averages over ``--num-queries`` evenly spaced queries, and
``far_future_mass_ratio`` counts only tokens more than one row ahead (beyond any conv's reach).

Outputs (``--out-dir``): ``probe.json`` and ``erf.png`` (an effective-receptive-field heat map per
setting, query marked, tokens after it outlined), both written atomically.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs, so that `sf_mamba probe --help` stays instant
    import torch
    import torch.nn as nn


def _stage3_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch

    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        captured["x"] = args[0].detach()
        raise _Stop

    handle = model.stages[2].register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model.forward_features(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


class _Stop(Exception):
    pass


def token_mass(model: nn.Module, x: torch.Tensor, query: tuple[int, int]) -> torch.Tensor:
    """(H, W) gradient mass of stage-3 input tokens for output token ``query`` (row, col)."""
    stage = model.stages[2]
    feat = _stage3_input(model, x).clone().requires_grad_(True)
    out = stage(feat)
    if out.shape[-2:] != feat.shape[-2:]:
        raise RuntimeError(f"stage 3 changed the map size {tuple(feat.shape[-2:])} -> {tuple(out.shape[-2:])}; "
                           "expected the pre-downsample map")
    out[:, :, query[0], query[1]].sum().backward()
    return feat.grad.abs().sum(dim=1).mean(dim=0)  # (H, W)


def mass_ratios(mass: torch.Tensor, query: tuple[int, int]) -> dict[str, float]:
    h, w = mass.shape
    flat = mass.flatten().double()
    total = flat.sum().item() or 1.0
    q = query[0] * w + query[1]
    far = min(h * w, q + w + 1)  # more than one row (w positions) ahead: beyond any local conv's reach
    return {"future_mass_ratio": flat[q + 1:].sum().item() / total,
            "past_mass_ratio": flat[:q].sum().item() / total,
            "self_mass_ratio": flat[q].item() / total,
            "far_future_mass_ratio": flat[far:].sum().item() / total}


def probe_model(model: nn.Module, img_size: int = 224, batch: int = 2, seed: int = 0,
                num_queries: int = 8, images: torch.Tensor | None = None) -> dict[str, Any]:
    import torch

    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = images if images is not None else torch.randn(batch, 3, img_size, img_size, generator=g)
    feat = _stage3_input(model, x)
    h, w = feat.shape[-2:]
    center = (h // 2, w // 2)
    mass = token_mass(model, x, center)
    res: dict[str, Any] = {"stage3_hw": [h, w], "query": list(center), **mass_ratios(mass, center),
                           "mass_map": mass.tolist()}
    n = h * w
    qs = sorted({int(round(i * (n - 1) / max(num_queries - 1, 1))) for i in range(num_queries)})
    qs = [q for q in qs if q < n - 1] or [0]   # the last token has no future
    ratios = [mass_ratios(token_mass(model, x, (q // w, q % w)), (q // w, q % w)) for q in qs]
    res["future_mass_ratio_mean"] = sum(r["future_mass_ratio"] for r in ratios) / len(ratios)
    res["far_future_mass_ratio_mean"] = sum(r["far_future_mass_ratio"] for r in ratios) / len(ratios)
    res["queries"] = qs
    return res


def plot_heatmaps(entries: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from sf_mamba.utils.io import atomic_write_bytes

    n = len(entries)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, e in zip(axes.flat, entries):
        mass = torch.tensor(e["mass_map"])
        rel = (mass / mass.max().clamp_min(1e-30)).clamp_min(1e-6).log10()  # log scale: long-range mass is small
        im = ax.imshow(rel.numpy(), cmap="magma", vmin=-6, vmax=0)
        qr, qc = e["query"]
        ax.add_patch(Rectangle((qc - 0.5, qr - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
        ax.axhline(qr + 0.5, color="cyan", lw=0.6, ls="--")
        ax.set_title(f"{e['label']}\nfuture mass {100 * e['future_mass_ratio']:.1f}%", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label="log10(mass / max)")
    fig.suptitle("stage-3 |grad| of the centre output token w.r.t. stage-3 input tokens\n"
                 "(cyan: query; below the dashed line and right of it on its row = later in raster order)",
                 fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_probe(model_name: str = "sf_mamba_t", scans=("swap", "uni"), attention=(False, True),
              img_size: int = 224, batch: int = 2, seed: int = 0, num_queries: int = 8,
              model_kwargs: dict | None = None, checkpoint: str | None = None) -> list[dict]:
    import torch

    from sf_mamba.utils.cli import create_model, fail, load_checkpoint, shorten

    state = None
    if checkpoint:
        state = load_checkpoint(checkpoint, option="--checkpoint")
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not any(k.endswith("head.weight") for k in state):
            fail(f"--checkpoint {checkpoint!r} holds no model state_dict with a classifier head")
    entries = []
    for attn in attention:
        for scan in scans:
            torch.manual_seed(seed)
            kwargs = {**(model_kwargs or {}), "scan": scan, "attention": attn}
            model = create_model(model_name, kwargs)
            if state is not None:
                model.reset_classifier(next(v.shape[0] for k, v in state.items() if k.endswith("head.weight")))
                try:
                    model.load_state_dict(state)
                except RuntimeError as err:
                    fail(f"--checkpoint {checkpoint!r} does not fit {model_name} with {kwargs}: {shorten(err)}")
            r = probe_model(model, img_size, batch, seed, num_queries)
            r.update(model=model_name, scan=scan, attention=attn, model_kwargs=kwargs, img_size=img_size,
                     label=f"{model_name} scan={scan} attention={attn}", checkpoint=checkpoint)
            entries.append(r)
    return entries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default="sf_mamba_t", help="timm model name (default sf_mamba_t)")
    parser.add_argument("--scan", action="append", default=None,
                        help="scan design(s) to compare (repeatable; default: swap and uni)")
    parser.add_argument("--attention", choices=["off", "on", "both"], default="both",
                        help="attention blocks in the hybrid stages (default both; 'off' is the clean test)")
    parser.add_argument("--img-size", type=int, default=224, help="input side (224 -> 14x14 stage-3 tokens)")
    parser.add_argument("--batch", type=int, default=2, help="random inputs averaged over")
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of extra constructor kwargs")
    parser.add_argument("--checkpoint", default=None, help="load trained weights (must match the settings)")
    parser.add_argument("--out-dir", "-o", required=True, help="writes probe.json and erf.png here")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.utils.cli import check_output_path, fail, parse_json_object, print_json, write_json_result
    from sf_mamba.utils.provenance import build_meta

    kwargs = parse_json_object(args.model_kwargs)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        fail(f"--checkpoint {args.checkpoint!r} not found")
    out = Path(args.out_dir)
    check_output_path(out / "probe.json", option="--out-dir")
    attention = {"off": (False,), "on": (True,), "both": (False, True)}[args.attention]
    entries = run_probe(args.model, tuple(args.scan or ("swap", "uni")), attention, args.img_size,
                        args.batch, args.seed, args.num_queries, kwargs, args.checkpoint)
    plot_heatmaps(entries, out / "erf.png")
    summary = [{k: e[k] for k in ("label", "scan", "attention", "future_mass_ratio", "future_mass_ratio_mean",
                                  "far_future_mass_ratio", "far_future_mass_ratio_mean", "past_mass_ratio",
                                  "self_mass_ratio", "stage3_hw")} for e in entries]
    write_json_result(out / "probe.json", {"entries": entries, "summary": summary,
                                           "meta": build_meta(seed=args.seed, extra={"kind": "probe"})})
    for s in summary:
        print(f"{s['label']}: future mass {100 * s['future_mass_ratio']:.2f}% (mean over queries "
              f"{100 * s['future_mass_ratio_mean']:.2f}%, >1 row ahead {100 * s['far_future_mass_ratio_mean']:.2f}%)",
              file=sys.stderr)
    print_json(summary)
    return 0
