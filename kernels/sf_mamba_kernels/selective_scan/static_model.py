"""Static (compile-time) time model of the Triton selective scan; no GPU, no compile, no torch.

It reads the committed per-kernel compile figures (``results/kernels/aot_sm<arch>.json``, written by
``python -m sf_mamba_kernels.selective_scan.aot``) and scales them to a shape:

    warps      = ceil(batch / fold) * ceil(channels / BLOCK_D) * num_warps      (one program per warp)
    iterations = (fold * length) // CHUNK                                       (per program)
    instr/warp = loop_instructions * iterations + (other instructions, once)
    issue time = ceil(warps / (132 SMs * 4 schedulers)) * instr/warp / 1.98 GHz
    MUFU time  = ceil(warps / 132) * MUFU ops/warp * 32 lanes / 16 per clock / 1.98 GHz
    HBM time   = bytes moved / 3.35 TB/s
    time       = max(issue, MUFU, HBM)

Machine: H100 SXM (spec values, not measured); a warp scheduler is assumed to hide all latency.
These are **static predictions**, not measurements. A d_state other than the compiled one scales
the per-element loop work linearly (an approximation).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

N_SM = 132
CLOCK_HZ = 1.98e9
ISSUE_PER_CLK_SM = 4
MUFU_PER_CLK_SM = 16
HBM_BYTES_PER_S = 3.35e12
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
                  "torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32"}
FIGURES_DIR = Path(__file__).resolve().parents[3] / "results" / "kernels"


def _dtype_name(dtype) -> str:
    name = str(dtype)
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
    return name


@lru_cache(maxsize=None)
def _rows(arch: str) -> tuple:
    path = FIGURES_DIR / f"aot_{arch.replace('_', '')}.json"
    if not path.exists():
        raise FileNotFoundError(f"no compile figures for {arch}: {path} is missing "
                                "(python -m sf_mamba_kernels.selective_scan.aot writes it)")
    return tuple(json.loads(path.read_text()))


def kernel_figures(kernel: str, dtype, fold: int, arch: str = "sm_90", length: int | None = None) -> dict:
    """The committed compile figures of one kernel variant (fold 1 has no reset, fold > 1 has one),
    from the compiled stage whose length is nearest ``length``."""
    name = _dtype_name(dtype)
    rows = [r for r in _rows(arch) if r["kernel"] == kernel and r["dtype"] == name and (r["fold"] > 1) == (fold > 1)]
    if not rows:
        raise KeyError(f"no {kernel} figures for {name} in aot_{arch}.json")
    return min(rows, key=lambda r: abs(math.log(r["length"] / length)) if length else 0.0)


def moved_bytes(kernel: str, batch: int, length: int, channels: int, d_state: int, dtype, ckpt: int) -> tuple:
    """(bytes the kernel moves, bytes of the op's floor) for the model's call: D, delta_bias, no z,
    one B/C group."""
    s = DTYPE_BYTES[_dtype_name(dtype)]
    tokens = batch * length
    bc = 2 * tokens * d_state * s
    checkpoints = batch * channels * math.ceil(length / ckpt) * d_state * 4
    if kernel == "fwd":
        floor = tokens * channels * 3 * s + bc  # u, delta in; out
        return floor, floor
    if kernel == "fwd_save":
        floor = tokens * channels * 3 * s + bc
        return floor + checkpoints, floor
    # backward: u, delta, dout in; du, ddelta out; B, C in; dB, dC out (fp32)
    floor = tokens * channels * 5 * s + bc + 2 * tokens * d_state * 4
    return floor + checkpoints, floor


def estimate(fig: dict, kernel: str, batch: int, length: int, channels: int, d_state: int, fold: int, dtype) -> dict:
    """Static time (µs) of one launch from compile figures ``fig`` (see the module docstring)."""
    rows = max(1, min(fold, batch))
    warps = math.ceil(batch / rows) * math.ceil(channels / fig["block_d"]) * fig["num_warps"]
    iterations = rows * length // fig["chunk"]
    scale = d_state / fig["d_state"]
    loop = fig["loop_instructions"] * scale
    rest = fig["total_instructions"] - fig["loop_instructions"]
    per_warp_instr = loop * iterations + rest
    per_warp_mufu = fig["loop_mufu"] * scale * iterations + (fig["mufu"] - fig["loop_mufu"])
    issue_s = math.ceil(warps / (N_SM * ISSUE_PER_CLK_SM)) * per_warp_instr / CLOCK_HZ
    mufu_s = math.ceil(warps / N_SM) * per_warp_mufu * 32 / MUFU_PER_CLK_SM / CLOCK_HZ
    moved, floor_bytes = moved_bytes(kernel, batch, length, channels, d_state, dtype, fig["ckpt"])
    hbm_s = moved / HBM_BYTES_PER_S
    exps = batch * length * channels * d_state
    floor_s = max(floor_bytes / HBM_BYTES_PER_S, exps / (N_SM * MUFU_PER_CLK_SM * CLOCK_HZ))
    time_s = max(issue_s, mufu_s, hbm_s)
    bound = "issue" if time_s == issue_s else ("mufu" if time_s == mufu_s else "hbm")
    return dict(warps=warps, issue_us=issue_s * 1e6, mufu_us=mufu_s * 1e6, hbm_us=hbm_s * 1e6,
                floor_us=floor_s * 1e6, estimate_us=time_s * 1e6, bound=bound,
                static_fraction_of_floor=floor_s / time_s)


def predict_time_us(batch: int, length: int, channels: int, d_state: int, fold: int, dtype, arch: str = "sm_90",
                    direction: str = "fwd") -> float:
    """Static prediction (µs) of the Triton scan for one call.

    direction: 'fwd' (inference forward), 'fwd_save' (training forward, saves checkpoints),
    'bwd' (backward) or 'fwdbwd' (training forward + backward).
    """
    if direction == "fwdbwd":
        return (predict_time_us(batch, length, channels, d_state, fold, dtype, arch, "fwd_save")
                + predict_time_us(batch, length, channels, d_state, fold, dtype, arch, "bwd"))
    if direction not in ("fwd", "fwd_save", "bwd"):
        raise ValueError(f"direction must be fwd, fwd_save, bwd or fwdbwd, got {direction!r}")
    if min(batch, length, channels, d_state, fold) < 1:
        raise ValueError("batch, length, channels, d_state and fold must be >= 1")
    fig = kernel_figures(direction, dtype, fold, arch, length)
    return estimate(fig, direction, batch, length, channels, d_state, fold, dtype)["estimate_us"]


def predict_fold_speedup(batch: int, length: int, channels: int, d_state: int, fold: int, dtype,
                         arch: str = "sm_90") -> float:
    """time(fold=1) / time(fold) of the forward, statically predicted (> 1: folding helps)."""
    return (predict_time_us(batch, length, channels, d_state, 1, dtype, arch)
            / predict_time_us(batch, length, channels, d_state, fold, dtype, arch))
