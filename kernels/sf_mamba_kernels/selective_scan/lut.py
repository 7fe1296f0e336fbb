"""Fold-factor lookup table: the best batch-fold k per (GPU, batch, seq_len, channels, dtype).

The table is JSON (package data ``fold_lut.json`` beside this module; ``SF_MAMBA_FOLD_LUT``
overrides the path)::

    {"schema": 1,
     "gpus": {"NVIDIA H100 80GB HBM3": {
         "meta": {"measured_at": ..., "torch": ..., "triton": ..., "mode": "fwd", "n_state": 8},
         "entries": [{"batch": 128, "seq_len": 198, "channels": 160, "dtype": "bfloat16",
                      "fold": 4, "ms": {"1": 0.051, "2": 0.032, "4": 0.027}}, ...]}}}

Every number in it is measured by :func:`.bench.measure_lut_entries` (``sf_mamba lut build``) on
the GPU named by its key; nothing is written by hand. :func:`lookup_fold` is what the interface
calls for ``fold='auto'``: k = 1 on CPU, for an unknown GPU or without a table; otherwise the fold
of the nearest measured entry (same dtype preferred; distance in log2 of batch, seq_len and
channels). The interface clamps it to the batch and vetoes it with the static model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

SCHEMA = 1
LUT_PATH_ENV = "SF_MAMBA_FOLD_LUT"
DEFAULT_LUT_PATH = Path(__file__).resolve().parent / "fold_lut.json"
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

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
    """Fold of the nearest measured entry (same dtype first); 1 if none. Not clamped to the batch."""
    entries = list(entries)
    name = dtype_name(dtype)
    same = [e for e in entries if e.get("dtype") == name]
    pool = same or entries
    if not pool:
        return 1
    best = min(pool, key=lambda e: (_distance(e, batch, seq_len, channels), e["batch"], e["seq_len"], e["channels"]))
    return int(best["fold"])


def lookup_fold(batch, seq_len, channels, dtype, device) -> int:
    """Fold factor k for a scan of (batch, channels, seq_len) in ``dtype`` on ``device``.

    1 on CPU, without a table, or for a GPU the table has no entries for.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    try:
        dtype = dtype_name(dtype)
    except ValueError:  # the table holds fp16/bf16/fp32 timings only: fp64 never folds
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    gpu = load_table()["gpus"].get(device_name(index))
    if not gpu:
        return 1
    return nearest_fold(gpu.get("entries", []), int(batch), int(seq_len), int(channels), dtype)


def write_entries(entries: list[dict], gpu: str, meta: dict, path: str | os.PathLike | None = None) -> Path:
    """Replace ``gpu``'s section of the table at ``path`` atomically; other GPUs are kept."""
    path = Path(path) if path is not None else lut_path()
    table = read_table(path)
    table["gpus"][gpu] = {"meta": meta, "entries": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    # temp file + rename in the same folder (kernels depend on torch alone, not on sf_mamba's io)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(table, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _cached_table.cache_clear()
    return path
