"""RQ3's future-context evidence: table, figure and verdict lines, from ``runs.csv`` rows of kind
``fc_train`` (one per run; the per-image confusions are read from ``per_image.npz`` beside each
run's ``metrics.json``). Called by ``sf_mamba report`` (``sf_mamba.report.render``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sf_mamba.future_context import stats

KIND = "fc_train"
MISSING = "missing"
REGION_ORDER = ("overall", "top", "bottom")
MULTI_SCANS = ("bi_parallel", "bi_series", "cross4", "adventurer")


def _vals(group: pd.DataFrame, col: str) -> list[float]:
    if col not in group:
        return []
    return [float(v) for v in pd.to_numeric(group[col], errors="coerce") if not math.isnan(float(v))]


def mean_std(values: list[float], digits: int = 2, sci: bool = False) -> str:
    if not values:
        return MISSING
    m = float(np.mean(values))
    f = (lambda v: f"{v:.2e}") if sci else (lambda v: f"{v:.{digits}f}")
    if len(values) == 1:
        return f"{f(m)} (n=1)"
    return f"{f(m)} ± {f(float(np.std(values, ddof=1)))} (n={len(values)})"


def _true(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes")


def design_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: its description and the seed values of every metric."""
    fc = runs[runs["kind"] == KIND] if "kind" in runs else runs.iloc[0:0]
    rows = []
    for exp, g in fc.groupby("experiment", sort=False):
        ok = g[g["status"] == "ok"] if "status" in g else g
        first = g.iloc[0]
        row = {"experiment": exp, "label": str(first.get("label", exp) or exp), "scan": str(first.get("scan", "")),
               "attention": _true(first.get("attention", "")), "aux_tokens": str(first.get("aux_tokens", "")),
               "aux_init": str(first.get("aux_init", "")), "match_params": _true(first.get("match_params", "")),
               "seeds_done": f"{len(ok)}/{len(g)}", "paths": {int(s): p for s, p in zip(ok["seed"], ok["path"])}}
        for region in REGION_ORDER:
            for metric in ("miou", "pixel_acc", "fg_acc"):
                row[f"{region}.{metric}"] = _vals(ok, f"{region}.{metric}")
        for when in ("init", "trained"):
            row[f"probe.{when}"] = _vals(ok, f"probe.{when}.far_future_mass_ratio_mean")
        row["params_m"] = _vals(ok, "params_m")
        row["images_per_s"] = _vals(ok, "train.images_per_s")
        row["epochs"] = _vals(ok, "train.epochs")
        rows.append(row)
    return pd.DataFrame(rows)


def load_confusions(paths: dict[int, str]) -> dict[int, np.ndarray]:
    out = {}
    for seed, metrics_path in paths.items():
        npz = Path(metrics_path).with_name("per_image.npz")
        if npz.exists():
            out[seed] = np.load(npz)["confusion"]
    return out


def find(designs: pd.DataFrame, scan: str, attention: bool, aux_tokens: str | None = None,
         aux_init: str | None = None, match_params: bool = False) -> pd.Series | None:
    if not len(designs):
        return None
    sel = designs[(designs["scan"] == scan) & (designs["attention"] == attention)
                  & (designs["match_params"] == match_params)]
    if aux_tokens is not None:
        sel = sel[sel["aux_tokens"] == aux_tokens]
    if aux_init is not None:
        sel = sel[sel["aux_init"] == aux_init]
    return sel.iloc[0] if len(sel) else None


def analyse(runs: pd.DataFrame, n_boot: int = 1000) -> dict:
    """Designs, paired contrasts vs uni (same attention setting) per region, and the verdicts."""
    designs = design_rows(runs)
    conf = {r["experiment"]: load_confusions(r["paths"]) for _, r in designs.iterrows()} if len(designs) else {}

    def ci(plus, minus, region="top", extra=()):
        if plus is None or minus is None:
            return None
        terms = [(1.0, conf[plus["experiment"]]), (-1.0, conf[minus["experiment"]]), *extra]
        if any(not t[1] for t in terms):
            return None
        return stats.contrast(terms, "fg_acc", region, n_boot=n_boot)

    vs_uni = {}
    for _, d in designs.iterrows():
        base = find(designs, "uni", d["attention"], "0")
        if base is None or base["experiment"] == d["experiment"]:
            continue
        vs_uni[d["experiment"]] = {region: ci(d, base, region) for region in REGION_ORDER}

    uni_off, uni_on = find(designs, "uni", False, "0"), find(designs, "uni", True, "0")
    swap_off = find(designs, "swap", False, "2", "learnable")
    swap_on = find(designs, "swap", True, "2", "learnable")
    swap1_off = find(designs, "swap", False, "1", "learnable")
    swap_mean_off = find(designs, "swap", False, "2", "mean")
    verdicts = []

    def probe_mean(d, when="trained"):
        return float(np.mean(d[f"probe.{when}"])) if d is not None and d[f"probe.{when}"] else None

    gain_off = ci(swap_off, uni_off)
    v, e = stats.verdict_flow(probe_mean(swap_off), probe_mean(uni_off), gain_off)
    if gain_off is not None:  # a gain that comes from the future should be larger where the future is needed
        e += f"; bottom region (needs less future) {stats.fmt_ci(ci(swap_off, uni_off, 'bottom'))}"
    verdicts.append(("swap gives future→past information flow (attention off)", v, e))

    vs_multi, cost = {}, {}
    for _, d in designs.iterrows():
        if d["scan"] in MULTI_SCANS and not d["attention"] and swap_off is not None:
            vs_multi[d["label"]] = ci(swap_off, d)
            p_ratio = (np.mean(d["params_m"]) / np.mean(swap_off["params_m"])) if d["params_m"] and swap_off["params_m"] else None
            t_ratio = (np.mean(swap_off["images_per_s"]) / np.mean(d["images_per_s"])) if d["images_per_s"] and swap_off["images_per_s"] else None
            cost[d["label"]] = ", ".join(x for x in (
                f"params ×{p_ratio:.3f}" if p_ratio else "", f"train time ×{t_ratio:.2f}" if t_ratio else "") if x)
    v, e = stats.verdict_matches_multiscan(vs_multi, cost)
    verdicts.append(("swap matches multi-directional scans at lower cost (attention off)", v, e))

    count = ci(swap_off, swap1_off)
    verdicts.append(("two aux tokens beat one (attention off)", stats.directional(count),
                     f"top-region ink accuracy 2 − 1 tokens {stats.fmt_ci(count)}"))
    init = ci(swap_off, swap_mean_off)
    v = stats.directional(init)
    verdicts.append(("learnable aux initialisation beats mean (heading-average) initialisation", v,
                     f"top-region ink accuracy learnable − mean {stats.fmt_ci(init)}"))

    gain_on = ci(swap_on, uni_on)
    did = None
    if gain_off is not None and gain_on is not None:
        did = stats.contrast([(1.0, conf[swap_off["experiment"]]), (-1.0, conf[uni_off["experiment"]]),
                              (-1.0, conf[swap_on["experiment"]]), (1.0, conf[uni_on["experiment"]])],
                             "fg_acc", "top", n_boot=n_boot)
    v, e = stats.verdict_attention_hides(did, gain_off, gain_on)
    verdicts.append(("attention hides the swap's effect", v, e))
    return {"designs": designs, "vs_uni": vs_uni, "verdicts": verdicts}


def scale_note(designs: pd.DataFrame) -> str:
    if not len(designs):
        return "no runs"
    epochs = sorted({int(e) for v in designs["epochs"] for e in v})
    per_design = sorted({len(p) for p in designs["paths"]})
    params = [np.mean(v) for v in designs["params_m"] if v]
    if not params:
        return "no finished runs"
    return (f"scale: ~{np.mean(params):.2f}M-parameter models, digits at 128 px, "
            f"{'/'.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''}, "
            f"{'–'.join(map(str, sorted({per_design[0], per_design[-1]})))} seed(s) per design, "
            f"CPU — evidence on the mechanism, far below the paper's ImageNet scale")


def tables(result: dict) -> list[tuple[str, pd.DataFrame]]:
    designs = result["designs"]
    if not len(designs):
        return [("designs", pd.DataFrame({"status": ["no future-context runs"]}))]
    t1 = pd.DataFrame({
        "design": designs["label"], "scan": designs["scan"], "attention": designs["attention"],
        "aux": designs["aux_tokens"] + " " + designs["aux_init"], "param-matched": designs["match_params"],
        "params (M)": designs["params_m"].map(lambda v: f"{np.mean(v):.4f}" if v else MISSING),
        "mIoU (%)": designs["overall.miou"].map(mean_std),
        "pixel acc (%)": designs["overall.pixel_acc"].map(mean_std),
        "ink acc, top (%)": designs["top.fg_acc"].map(mean_std),
        "ink acc, bottom (%)": designs["bottom.fg_acc"].map(mean_std),
        "mIoU top (%)": designs["top.miou"].map(mean_std),
        "mIoU bottom (%)": designs["bottom.miou"].map(mean_std),
        "train img/s": designs["images_per_s"].map(lambda v: f"{np.mean(v):.1f}" if v else MISSING),
        "seeds": designs["seeds_done"]})
    rows = []
    for exp, by_region in result["vs_uni"].items():
        label = designs.loc[designs["experiment"] == exp, "label"].iloc[0]
        rows.append({"design": label, **{f"Δ ink acc vs uni, {r}": stats.fmt_ci(by_region[r]) for r in REGION_ORDER}})
    t2 = pd.DataFrame(rows) if rows else pd.DataFrame({"status": ["no pair with a uni run"]})
    t3 = pd.DataFrame({
        "design": designs["label"],
        "far-future mass, init": designs["probe.init"].map(lambda v: mean_std(v, sci=True)),
        "far-future mass, trained": designs["probe.trained"].map(lambda v: mean_std(v, sci=True))})
    return [("designs (mean ± std over seeds)", t1),
            ("paired difference vs uni with the same attention setting (bootstrap over seeds and test images)", t2),
            ("information-flow probe: far-future gradient mass at initialisation and on the final checkpoint", t3)]


def verdict_lines(result: dict) -> list[str]:
    note = scale_note(result["designs"])
    return [f"**{claim}**: *{verdict}* — {evidence}. ({note})" for claim, verdict, evidence in result["verdicts"]]


def figure(result: dict, out: Path, save) -> None:
    import matplotlib.pyplot as plt

    designs = result["designs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    if len(designs) and any(designs["top.fg_acc"].map(bool)):
        x = np.arange(len(designs))
        width = 0.38
        for i, (region, color) in enumerate((("top", "tab:red"), ("bottom", "tab:blue"))):
            vals = designs[f"{region}.fg_acc"]
            means = [np.mean(v) if v else np.nan for v in vals]
            errs = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals]
            ax.bar(x + (i - 0.5) * width, means, width, yerr=errs, capsize=3, color=color, alpha=0.8,
                   label=f"{region} half (raster order: {'earlier' if region == 'top' else 'later'})")
        ax.set_xticks(x, designs["label"], rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("ink-pixel accuracy (%) ± std over seeds")
        lo = np.nanmin([np.mean(v) for v in designs["top.fg_acc"] if v] + [np.mean(v) for v in designs["bottom.fg_acc"] if v])
        ax.set_ylim(max(0, lo - 10), 100)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    else:
        ax.text(0.5, 0.5, "no finished runs (missing)", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("future-context task: accuracy by raster region", fontsize=9)
    ax = axes[1]
    if len(designs) and any(designs["probe.trained"].map(bool)):
        x = np.arange(len(designs))
        width = 0.38
        positive = []
        for i, (when, color) in enumerate((("init", "0.6"), ("trained", "tab:orange"))):
            vals = designs[f"probe.{when}"]
            means = [np.mean(v) if v else np.nan for v in vals]
            errs = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals]
            positive += [m for m in means if m and m > 0]
            # masses are >= 0: clip the lower bar at 0 (a symlog axis would draw it far below)
            lower = [min(e, m) if m == m else 0 for e, m in zip(errs, means)]
            ax.bar(x + (i - 0.5) * width, means, width, yerr=[lower, errs], capsize=3, color=color, label=when)
        if positive:
            ax.set_yscale("symlog", linthresh=min(positive) / 10)
        ax.set_xticks(x, designs["label"], rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("far-future gradient mass (stage 3, symlog)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    else:
        ax.text(0.5, 0.5, "probe missing", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("information-flow probe: initialisation vs final checkpoint", fontsize=9)
    fig.suptitle("RQ3: does the swap carry the future, and does the task use it?", fontsize=10)
    save(fig, out, "future_context")
