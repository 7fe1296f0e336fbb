"""Fold-factor lookup table: the best batch-fold k per (GPU, batch, seq_len, channels, dtype).

The table is JSON (package data ``sf_mamba/data/fold_lut.json``; ``SF_MAMBA_FOLD_LUT`` overrides
the path)::

    {"schema": 1,
     "gpus": {"NVIDIA H100 80GB HBM3": {
         "meta": {"measured_at": ..., "torch": ..., "triton": ..., "mode": "fwd", "n_state": 8},
         "entries": [{"batch": 128, "seq_len": 198, "channels": 160, "dtype": "bfloat16",
                      "fold": 4, "ms": {"1": 0.051, "2": 0.032, "4": 0.027}}, ...]}}}

Every number in it is measured by :func:`measure_entries` (``sf_mamba lut build``) on the GPU
named by its key; nothing is written by hand. :func:`lookup_fold` is what the model calls when
``fold='auto'``: k = 1 on CPU, for an unknown GPU or without a table; otherwise the fold of the
nearest measured entry (same dtype preferred; distance in log2 of batch, seq_len and channels),
clipped to the batch.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch

SCHEMA = 1
LUT_PATH_ENV = "SF_MAMBA_FOLD_LUT"
DEFAULT_LUT_PATH = Path(__file__).resolve().parent.parent / "data" / "fold_lut.json"
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

# Build grid: SSM widths are half the stage width (T: 320/640, S: 384/768, B: 512/1024).
DEFAULT_SEQ_LENS = (49, 196)
DEFAULT_AUX_TOKENS = 2
DEFAULT_CHANNELS = (160, 320, 192, 384, 256, 512)
DEFAULT_BATCHES = (1, 4, 16, 32, 64, 128, 256)
DEFAULT_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_FOLDS = (1, 2, 4, 5, 8, 10, 16, 20, 32)


def lut_path() -> Path:
    return Path(os.environ.get(LUT_PATH_ENV) or DEFAULT_LUT_PATH)


def dtype_name(dtype: Any) -> str:
    """'float16' | 'bfloat16' | 'float32' from a torch dtype or one of those strings."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
        return DTYPE_NAMES[dtype]
    name = str(dtype).replace("torch.", "")
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    name = aliases.get(name, name)
    if name not in DTYPE_NAMES.values():
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    return name


def empty_table() -> dict:
    return {"schema": SCHEMA, "gpus": {}}


def read_table(path: str | os.PathLike | None = None) -> dict:
    """The table at ``path`` (default :func:`lut_path`); an empty table if absent or empty."""
    path = Path(path) if path is not None else lut_path()
    if not path.is_file() or not path.read_text().strip():
        return empty_table()
    table = json.loads(path.read_text())
    if not isinstance(table, dict) or table.get("schema") != SCHEMA or not isinstance(table.get("gpus"), dict):
        raise ValueError(f"{path} is not a fold LUT (schema {SCHEMA} with a 'gpus' mapping)")
    return table


@functools.lru_cache(maxsize=8)
def _cached_table(path: str, mtime_ns: int) -> dict:
    return read_table(path)


def load_table() -> dict:
    """:func:`read_table` cached on (path, mtime), so the per-forward lookup reads no file."""
    path = lut_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return empty_table()
    return _cached_table(str(path), mtime)


@functools.lru_cache(maxsize=16)
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _distance(entry: dict, batch: int, seq_len: int, channels: int) -> float:
    return (abs(math.log2(max(entry["batch"], 1) / max(batch, 1)))
            + abs(math.log2(max(entry["seq_len"], 1) / max(seq_len, 1)))
            + abs(math.log2(max(entry["channels"], 1) / max(channels, 1))))


def nearest_fold(entries: Iterable[dict], batch: int, seq_len: int, channels: int, dtype: Any) -> int:
    """Fold of the nearest measured entry (same dtype first), clipped to [1, batch]; 1 if none."""
    entries = list(entries)
    name = dtype_name(dtype)
    same = [e for e in entries if e.get("dtype") == name]
    pool = same or entries
    if not pool:
        return 1
    best = min(pool, key=lambda e: (_distance(e, batch, seq_len, channels), e["batch"], e["seq_len"], e["channels"]))
    return max(1, min(int(best["fold"]), max(batch, 1)))


def lookup_fold(batch, seq_len, channels, dtype, device) -> int:
    """Fold factor k for a scan of (batch, channels, seq_len) in ``dtype`` on ``device``.

    1 on CPU, without a table, or for a GPU the table has no entries for.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    gpu = load_table()["gpus"].get(device_name(index))
    if not gpu:
        return 1
    return nearest_fold(gpu.get("entries", []), int(batch), int(seq_len), int(channels), dtype)


# ----------------------------------------------------------------------------------------------
# measurement (GPU only)


def scan_inputs(batch, seq_len, channels, dtype, device, n_state=8, seed=0):
    """Random MambaVision-like scan inputs: u, delta, A, B, C, D, delta_bias (mamba_ssm's test law)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: big shapes are many MB
    dtype = getattr(torch, dtype_name(dtype))

    def rand(*shape, scale=1.0, normal=True):
        draw = torch.randn if normal else torch.rand
        return draw(*shape, generator=gen, device=device) * scale

    u = rand(batch, channels, seq_len).to(dtype)
    delta = rand(batch, channels, seq_len, scale=0.5, normal=False).to(dtype)
    A = -rand(channels, n_state, scale=0.5, normal=False)
    B = rand(batch, n_state, seq_len).to(dtype)
    C = rand(batch, n_state, seq_len).to(dtype)
    D = rand(channels)
    delta_bias = rand(channels, scale=0.5, normal=False)
    return u, delta, A, B, C, D, delta_bias


def time_fold(inputs, seq_len, fold, mode="fwd", warmup=5, rep=20) -> float:
    """Median ms of one Triton scan call with logical fold ``fold`` (reset every seq_len)."""
    from sf_mamba_kernels.selective_scan.triton_scan import selective_scan_triton

    u, delta, A, B, C, D, delta_bias = inputs
    if mode == "fwd":
        def call():
            with torch.no_grad():
                selective_scan_triton(u, delta, A, B, C, D=D, delta_bias=delta_bias, reset_every=seq_len, fold=fold)
    elif mode == "fwdbwd":
        u_g = u.detach().clone().requires_grad_()

        def call():
            out = selective_scan_triton(u_g, delta, A, B, C, D=D, delta_bias=delta_bias, reset_every=seq_len,
                                        fold=fold)
            out.sum().backward()
    else:
        raise ValueError(f"mode must be 'fwd' or 'fwdbwd', got {mode!r}")
    return median_ms(call, warmup=warmup, rep=rep)


def median_ms(fn, warmup=5, rep=20) -> float:
    """Median of ``triton.testing.do_bench`` (it flushes L2 between reps)."""
    import triton.testing

    result = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5])
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def measure_entries(seq_lens=DEFAULT_SEQ_LENS, aux_tokens=DEFAULT_AUX_TOKENS, channels=DEFAULT_CHANNELS,
                    batches=DEFAULT_BATCHES, dtypes=DEFAULT_DTYPES, folds=DEFAULT_FOLDS, n_state=8,
                    mode="fwd", device="cuda", log=None, warmup=5, rep=20, deadline=None) -> list[dict]:
    """Time every candidate fold per shape on ``device``; one entry per shape with the fastest k.

    ``deadline`` (a ``time.monotonic()`` value) stops the sweep early with the entries so far.
    """
    import time

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
                    inputs = scan_inputs(batch, seq_len, ch, dtype, device, n_state=n_state)
                    times = {}
                    for k in folds:
                        if k > batch:
                            continue
                        times[str(k)] = round(time_fold(inputs, seq_len, k, mode=mode, warmup=warmup, rep=rep), 5)
                    best = min(times, key=lambda key: (times[key], int(key)))
                    entry = {"batch": batch, "seq_len": seq_len, "channels": ch, "dtype": dtype_name(dtype),
                             "fold": int(best), "ms": times}
                    entries.append(entry)
                    if log:
                        log(f"{dtype_name(dtype):>8} L={seq_len:<4} D={ch:<4} B={batch:<4} -> k={best:<3} "
                            f"({times['1']:.4f} -> {times[best]:.4f} ms)")
    return entries


def write_entries(entries: list[dict], gpu: str, meta: dict, path: str | os.PathLike | None = None) -> Path:
    """Replace ``gpu``'s section of the table at ``path`` atomically; other GPUs are kept."""
    from sf_mamba.utils.io import atomic_write_json

    path = Path(path) if path is not None else lut_path()
    table = read_table(path)
    table["gpus"][gpu] = {"meta": meta, "entries": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, table)
    _cached_table.cache_clear()
    return path


def build_meta(mode: str, n_state: int) -> dict:
    import datetime

    import triton
    from sf_mamba_kernels.selective_scan.triton_scan import pick_block_d

    # the kernel's tiling policy at measurement time: a different one makes the table stale
    block_d = {str(ch): pick_block_d(ch, triton.next_power_of_2(n_state)) for ch in DEFAULT_CHANNELS}
    return {"measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton.__version__, "mode": mode, "n_state": n_state,
            "block_d": block_d}
