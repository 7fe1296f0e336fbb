"""Measurement of the selective scan, in one place: timers, the fold sweep, the LUT build, the
roofline floor and the static model's prediction beside each measured point.

Used by ``sf_mamba fold-sweep`` (sf_mamba/bench/fold_sweep.py), ``sf_mamba lut build``
(:mod:`.lut_cli`), ``kernels/device_check.py`` and ``benchmarks/cpu_speed.py``. Inputs always come
from :func:`.testing.make_scan_inputs`. Nothing here writes a number it did not measure; the static
model's figures are labelled ``predicted`` (static, sm_90) wherever they appear.
"""

from __future__ import annotations

import hashlib
import inspect
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from . import lut, predicted
from .interface import backend_impl, resolve_backend, selective_scan_fn
from .testing import SCAN_ARGS, make_scan_inputs

# LUT build grid: SSM widths are half the stage width (T: 320/640, S: 384/768, B: 512/1024).
DEFAULT_SEQ_LENS = (49, 196)
DEFAULT_AUX_TOKENS = 2
DEFAULT_CHANNELS = (160, 320, 192, 384, 256, 512)
DEFAULT_BATCHES = (1, 4, 16, 32, 64, 128, 256)
DEFAULT_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_FOLDS = (1, 2, 4, 5, 8, 10, 16, 20, 32)

# Spec peaks for the roofline floor (assumptions, not measurements): HBM bytes/s by GPU name,
# MUFU exp2 = 16 per clock per SM at the boost clock below.
HBM_PEAK = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}
BOOST_CLOCK_HZ = {"H200": 1.98e9, "H100": 1.98e9, "A100": 1.41e9}


# ---------------------------------------------------------------------------------------------- timers


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def wall_times_ms(fn: Callable, repeats: int, warmup: int = 1, device="cpu") -> list[float]:
    """Wall time of ``repeats`` calls of ``fn`` (ms each, synchronised on CUDA), after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(fn: Callable, warmup: int = 5, rep: int = 20) -> float:
    """GPU: median of ``triton.testing.do_bench`` (it flushes L2 between reps); ``warmup``/``rep`` in ms."""
    import triton.testing

    result = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5])
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def graph_median_ms(fn: Callable, rep: int) -> float | None:
    """Median ms of ``fn`` replayed from a CUDA graph (no Python/launch overhead); None if unavailable.

    Stage-4 scans take single-digit microseconds, less than a Python launch: without graphs the
    k=1 vs k=LUT ratio is compressed towards 1. ``fn`` must have run once (compiled) before.
    """
    import triton.testing

    bench = getattr(triton.testing, "do_bench_cudagraph", None)
    if bench is None:
        return None
    kwargs = {"rep": rep}
    if "return_mode" in inspect.signature(bench).parameters:
        kwargs["return_mode"] = "median"
    try:
        result = bench(fn, **kwargs)
    except Exception:  # capture fails on some torch/triton pairs: report no graph figure
        return None
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def scan_call(inputs: dict, *, fold: int, reset_every, backend: str = "auto", mode: str = "fwd",
              delta_softplus: bool = True) -> Callable:
    """A no-argument callable running one scan: forward under no_grad (``mode='fwd'``) or forward
    + backward of a fixed random upstream gradient (``'fwdbwd'``, gradients for u and delta).

    The arguments go through :func:`selective_scan_fn` once (validation, backend and fold
    resolution); the callable then calls the backend directly, so a timing is the backend's and
    not the interface's Python overhead (stage-4 scans are shorter than that overhead)."""
    if mode not in ("fwd", "fwdbwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwdbwd', got {mode!r}")
    u = inputs["u"]
    with torch.no_grad():  # validates and resolves exactly as a real call would
        selective_scan_fn(**inputs, delta_softplus=delta_softplus, reset_every=reset_every, fold=fold,
                          backend=backend)
    impl = backend_impl(resolve_backend(backend, u.device))
    fold = max(1, min(fold, u.shape[0]))
    args = {**{name: inputs.get(name) for name in SCAN_ARGS}}
    if mode == "fwdbwd":
        args["u"] = args["u"].detach().clone().requires_grad_(True)
        args["delta"] = args["delta"].detach().clone().requires_grad_(True)

    def run():
        return impl(*(args[name] for name in SCAN_ARGS), delta_softplus, False, reset_every, fold)

    if mode == "fwd":
        def call():
            with torch.no_grad():
                return run()
    else:
        upstream = {}

        def call():
            out = run()
            if "dout" not in upstream:  # a real gradient laid out like out (the model's), not sum()'s stride-0 one
                upstream["dout"] = torch.randn_like(out)
            out.backward(upstream["dout"])
            return out
    return call


# ---------------------------------------------------------------------------------------------- models of time


def roofline_floor_s(batch, channels, length, n_state, dtype, gpu_name, sm_count, has_z=False):
    """Forward lower bound max(bytes / HBM peak, exp2 / MUFU peak) and its inputs (spec peaks);
    (None, bytes, exp2) for a GPU whose peaks are not listed."""
    size = torch.tensor([], dtype=dtype).element_size()
    n_bytes = batch * length * (channels * (3 + has_z) * size + 2 * n_state * size)
    n_exp = batch * channels * length * n_state
    hbm = next((v for k, v in HBM_PEAK.items() if k in gpu_name), None)
    clock = next((v for k, v in BOOST_CLOCK_HZ.items() if k in gpu_name), None)
    mufu = 16 * sm_count * clock if clock else None
    parts = [p for p in (n_bytes / hbm if hbm else None, n_exp / mufu if mufu else None) if p is not None]
    return (max(parts) if parts else None), n_bytes, n_exp


def predicted_fold_speedup(batch, length, channels, d_state, fold, dtype) -> float | None:
    """The static model's time(k=1) / time(k) on sm_90; None where it has no figure (or is absent)."""
    return predicted.fold_speedup(batch, length, channels, d_state, fold, lut.dtype_name(dtype))


def predicted_time_us(batch, length, channels, d_state, fold, dtype, direction="fwd") -> float | None:
    """The static model's time in µs on sm_90 (``direction`` 'fwd', 'fwd_save', 'bwd' or 'fwdbwd');
    None without a figure."""
    return predicted.time_us(batch, length, channels, d_state, fold, lut.dtype_name(dtype), direction)


# ---------------------------------------------------------------------------------------------- fold sweep


def fold_sweep(batch_sizes, lengths, channels, folds, *, d_state=16, repeats=5, warmup=1, backend="torch",
               device="cpu", dtype=torch.float32, atol=1e-4, seed=0, rep_ms=None, log=None,
               layout="contiguous") -> list[dict]:
    """Time the scan at every fold k (reset every window, so k must not change the result) against
    k=1, on the same inputs; one row per (channels, length, batch, k) with the median time, the
    speed-up, the largest difference to k=1 and the static model's predicted speed-up.

    Timer: wall clock over ``repeats`` calls; with ``rep_ms`` on a CUDA device, CUDA-graph replay
    medians (do_bench medians where capture fails)."""
    gpu_timer = rep_ms is not None and torch.device(device).type == "cuda"
    rows = []
    for ch in channels:
        for length in lengths:
            for batch in batch_sizes:
                inputs = make_scan_inputs(batch, ch, d_state, length, dtype=dtype, seed=seed, device=device,
                                          layout=layout)
                base_out = base_ms = None
                # k > batch folds the whole batch, the same as k = batch: time it once
                for k in sorted({min(k, batch) for k in set(folds) | {1}}):
                    call = scan_call(inputs, fold=k, reset_every=length, backend=backend)
                    out = call()
                    if gpu_timer:  # graph replays where capture works: no host overhead in the ratio
                        graph = graph_median_ms(call, rep_ms)
                        times = [graph if graph is not None else median_ms(call, warmup=3, rep=rep_ms)]
                    else:
                        times = wall_times_ms(call, repeats, warmup=max(0, warmup - 1), device=device)
                    ms = statistics.median(times)
                    if k == 1:
                        base_out, base_ms = out, ms
                    diff = float((out.float() - base_out.float()).abs().max())
                    rows.append({"batch": batch, "length": length, "channels": ch, "d_state": d_state, "fold": k,
                                 "time_ms": ms, "time_ms_min": min(times), "time_ms_max": max(times),
                                 "speedup_vs_fold1": base_ms / ms if ms > 0 else None,
                                 "predicted_speedup_static_sm90": predicted_fold_speedup(
                                     batch, length, ch, d_state, k, dtype),
                                 "max_abs_diff": diff, "equal": diff <= atol})
                    if log:
                        log(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------- LUT build


def measure_lut_entries(seq_lens=DEFAULT_SEQ_LENS, aux_tokens=DEFAULT_AUX_TOKENS, channels=DEFAULT_CHANNELS,
                        batches=DEFAULT_BATCHES, dtypes=DEFAULT_DTYPES, folds=DEFAULT_FOLDS, n_state=8,
                        mode="fwd", device="cuda", log=None, warmup=5, rep=20, deadline=None) -> list[dict]:
    """Time every candidate fold per shape on ``device`` (Triton backend, do_bench medians); one
    LUT entry per shape with the fastest k. ``deadline`` (``time.monotonic()``) stops early."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("measuring the fold LUT needs a CUDA GPU (none is available here)")
    entries = []
    for dtype in dtypes:
        for seq_len in sorted({L + aux_tokens for L in seq_lens}):
            for ch in channels:
                for batch in batches:
                    if deadline is not None and time.monotonic() > deadline:
                        if log:
                            log("fold LUT sweep stopped at the deadline")
                        return entries
                    inputs = make_scan_inputs(batch, ch, n_state, seq_len, dtype=getattr(torch, lut.dtype_name(dtype)),
                                              has_z=False, device=device, layout="model")
                    times = {}
                    for k in folds:
                        if k <= batch:
                            call = scan_call(inputs, fold=k, reset_every=seq_len, backend="triton", mode=mode)
                            times[str(k)] = round(median_ms(call, warmup=warmup, rep=rep), 5)
                    best = min(times, key=lambda key: (times[key], int(key)))
                    entries.append({"batch": batch, "seq_len": seq_len, "channels": ch, "dtype": lut.dtype_name(dtype),
                                    "fold": int(best), "ms": times})
                    if log:
                        log(f"{lut.dtype_name(dtype):>8} L={seq_len:<4} D={ch:<4} B={batch:<4} -> k={best:<3} "
                            f"({times['1']:.4f} -> {times[best]:.4f} ms)")
    return entries


def lut_meta(mode: str, n_state: int) -> dict:
    """What the entries were measured with; a different kernel source makes the table stale."""
    import datetime

    import triton

    source = Path(__file__).with_name("triton_scan.py")
    return {"measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton.__version__, "mode": mode, "n_state": n_state,
            "kernel_sha256": hashlib.sha256(source.read_bytes()).hexdigest()[:16] if source.exists() else None}
