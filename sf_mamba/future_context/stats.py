"""Paired bootstrap over seeds and test images, and the verdict rules of RQ3's claims.

Every run of the task is evaluated on the same test images (the split is fixed), and two designs
trained with the same seed share their data order and as much of their initialisation as their
parameters allow. A contrast such as "swap − uni, top region" is therefore computed *paired*: per
bootstrap replicate, seeds are resampled with replacement and, within each, test images are
resampled with replacement (the same images for every design in the contrast); the statistic is
recomputed from the summed per-image confusion matrices. The percentile interval covers both the
seed-to-seed (training) and the image-to-image (test-set) variation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sf_mamba.future_context.data import REGIONS
from sf_mamba.future_context.metrics import scores

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
MARGIN = 1.0   # percentage points: a difference inside ±MARGIN counts as "no effect"


def region_confusion(conf: np.ndarray, region: str) -> np.ndarray:
    """(N, R, K, K) -> (N, K, K) for 'overall' or one of REGIONS."""
    if region == "overall":
        return conf.sum(1)
    if region not in REGIONS:
        raise ValueError(f"region must be 'overall' or one of {REGIONS}, got {region!r}")
    return conf[:, REGIONS.index(region)]


def contrast(terms: Sequence[tuple[float, dict[int, np.ndarray]]], metric: str = "fg_acc",
             region: str = "top", n_boot: int = 1000, level: float = 0.95, rng_seed: int = 0) -> dict:
    """sum_i coef_i * metric(design_i), averaged over the seeds every design has.

    ``terms``: (coef, {seed: per-image confusion (N, R, K, K)}) per design. Returns
    {'mean', 'lo', 'hi', 'n_seeds', 'n_images'}; mean/lo/hi are NaN when no seed is shared.
    """
    common = sorted(set.intersection(*(set(t[1]) for t in terms))) if terms else []
    if not common:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_seeds": 0, "n_images": 0}
    flat = {s: [(c, region_confusion(np.asarray(d[s], dtype=np.float64), region)) for c, d in terms]
            for s in common}
    n_images = {next(iter(flat[s]))[1].shape[0] for s in common}
    if len(n_images) != 1 or any(m.shape[0] != next(iter(n_images)) for s in common for _, m in flat[s]):
        raise ValueError("paired contrast needs the same test images in every run")
    n = n_images.pop()
    k = flat[common[0]][0][1].shape[-1]

    def value(seed: int, weights: np.ndarray | None) -> float:
        total = 0.0
        for coef, conf in flat[seed]:
            summed = conf.sum(0) if weights is None else np.tensordot(weights, conf, axes=1)
            total += coef * scores(summed.reshape(k, k))[metric]
        return total

    point = float(np.mean([value(s, None) for s in common]))
    rng = np.random.default_rng(rng_seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.choice(common, size=len(common), replace=True)
        boots[b] = np.mean([value(s, rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)) for s in seeds])
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "n_seeds": len(common), "n_images": n}


def directional(ci: dict | None, margin: float = MARGIN) -> str:
    """'A beats B' from a CI of A − B: above 0 supported; below 0, or inside ±margin, not
    supported; otherwise (or missing) inconclusive."""
    if not ci or ci.get("n_seeds", 0) == 0 or np.isnan(ci["lo"]):
        return INCONCLUSIVE
    if ci["lo"] > 0:
        return SUPPORTED
    if ci["hi"] < 0 or (ci["lo"] >= -margin and ci["hi"] <= margin):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def fmt_ci(ci: dict | None, unit: str = " pp") -> str:
    if not ci or ci.get("n_seeds", 0) == 0:
        return "missing"
    return f"{ci['mean']:+.2f}{unit} [95% CI {ci['lo']:+.2f}, {ci['hi']:+.2f}; {ci['n_seeds']} seeds × {ci['n_images']} images]"


def verdict_flow(probe_swap: float | None, probe_uni: float | None, gain_top: dict | None,
                 margin: float = MARGIN) -> tuple[str, str]:
    """Claim: the swap carries information from later to earlier tokens, and it is used.

    ``probe_*``: trained-weights far-future gradient mass (mean over seeds); ``gain_top``: CI of
    swap − uni on the top (future-needing) region, attention off."""
    if probe_swap is None or probe_uni is None:
        return INCONCLUSIVE, "probe missing"
    flows = probe_swap > 0 and probe_swap > 10 * probe_uni
    task = directional(gain_top, margin)
    evidence = (f"trained far-future gradient mass swap {probe_swap:.2e} vs uni {probe_uni:.2e}; "
                f"top-region ink accuracy swap − uni {fmt_ci(gain_top)}")
    if not flows:
        return NOT_SUPPORTED, evidence + " (no routed flow)"
    if task == SUPPORTED:
        return SUPPORTED, evidence
    if task == NOT_SUPPORTED:
        return NOT_SUPPORTED, evidence + " (flow exists but does not help the future-needing region)"
    return INCONCLUSIVE, evidence + " (flow exists; task effect unresolved)"


def verdict_matches_multiscan(vs: dict[str, dict], cost: dict[str, str], margin: float = MARGIN) -> tuple[str, str]:
    """Claim: swap matches multi-directional scans at lower cost. ``vs``: name -> CI of swap − X
    (top region); ``cost``: name -> text of X's cost relative to swap. 'matches' = CI above −margin;
    'worse' = CI below −margin."""
    have = {k: v for k, v in vs.items() if v and v.get("n_seeds", 0)}
    if not have:
        return INCONCLUSIVE, "no multi-directional run"
    parts = [f"{k}: {fmt_ci(v)}{', cost ' + cost[k] if cost.get(k) else ''}" for k, v in have.items()]
    worse = [k for k, v in have.items() if v["hi"] < -margin]
    matched = [k for k, v in have.items() if v["lo"] > -margin]
    if worse:
        return NOT_SUPPORTED, f"swap worse than {' / '.join(worse)}; " + "; ".join(parts)
    if len(matched) == len(have):
        return SUPPORTED, "; ".join(parts)
    return INCONCLUSIVE, "; ".join(parts)


def verdict_attention_hides(did: dict | None, gain_off: dict | None, gain_on: dict | None,
                            margin: float = MARGIN) -> tuple[str, str]:
    """Claim: attention hides the swap's effect, i.e. (swap − uni) without attention exceeds
    (swap − uni) with attention (difference in differences, top region)."""
    evidence = (f"swap − uni without attention {fmt_ci(gain_off)}; with attention {fmt_ci(gain_on)}; "
                f"difference {fmt_ci(did)}")
    return directional(did, margin), evidence
