"""``sf_mamba gather``: collect every expected result file into one tidy CSV.

Input is a *manifest*: a JSON list written by the workflow from the validated experiment sheet,
one entry per expected result file::

    {"kind": "train", "rq": "rq1_scan", "path": "results/runs/swap_attn/seed0/metrics.json",
     "experiment": "swap_attn", "seed": 0, "scan": "swap", ...}

Each entry becomes one row (a ``fold_sweep`` file becomes one row per measured point) with

- the manifest's description columns (experiment, seed, scan, attention, ...);
- ``status``: ``ok``, or ``missing`` when the file does not exist (a missing run is a row, never a
  silently shorter table; nothing is filled in);
- the file's scalar metrics (nested mappings flattened as ``a.b``), with normalised aliases:
  ``params_m``, ``macs_g``, ``throughput`` (img/s), ``miou``, ``device``;
- provenance from a ``meta.json`` beside the file, prefixed ``meta.`` (git sha, config hash, ...).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Iterable

from sf_mamba.utils.io import atomic_write_text

KINDS = ("train", "bench", "flops", "probe", "fold_sweep", "seg", "fc_train", "det")
# first present source wins; names are as the producing commands write them
ALIASES: dict[str, tuple[str, ...]] = {
    "throughput": ("throughput", "img_per_s", "images_per_s", "imgs_per_sec", "samples_per_sec",
                   "throughput_img_s", "throughput.median", "throughput.img_per_s"),
    "miou": ("miou", "mIoU", "metrics.mIoU", "metrics.miou"),
    "device": ("device_name", "gpu_name", "throughput_protocol.device_name", "protocol.device_name",
               "meta.device.device_name", "device", "protocol.device"),
}
# canonical columns recomputed from the sources even if a same-named raw value exists
OVERWRITE = {"device"}
META_KEEP = ("git", "config_sha256", "seed", "slurm", "device", "versions", "hostname", "start_utc",
             "end_utc", "wall_time_s")


def flatten(obj: Any, prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Scalars of a nested mapping as ``{'a.b': value}``; lists of scalars are joined with ','."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                if depth > 1:
                    out.update(flatten(value, name + ".", depth - 1))
            elif isinstance(value, (list, tuple)):
                if all(isinstance(v, (int, float, str, bool)) or v is None for v in value):
                    out[name] = ",".join("" if v is None else str(v) for v in value)
            else:
                out[name] = value
    return out


def _first(row: dict, names: Iterable[str]):
    for name in names:
        value = row.get(name)
        if value is not None and value != "" and not (isinstance(value, float) and math.isnan(value)):
            return value
    return None


def normalise(row: dict) -> dict:
    """Add the canonical metric columns every renderer relies on."""
    for canon, names in ALIASES.items():
        if canon in OVERWRITE or row.get(canon) in (None, "") or isinstance(row.get(canon), dict):
            value = _first(row, names)
            if value is not None:
                row[canon] = value
    if "params_m" not in row and isinstance(row.get("params"), (int, float)):
        row["params_m"] = row["params"] / 1e6
    if "macs_g" not in row and isinstance(row.get("macs"), (int, float)):
        row["macs_g"] = row["macs"] / 1e9
    if isinstance(row.get("throughput"), str):
        try:
            row["throughput"] = float(row["throughput"])
        except ValueError:
            row["throughput"] = None
    return row


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def gather_entry(entry: dict) -> list[dict]:
    """Rows for one manifest entry (several for a fold sweep)."""
    if entry.get("kind") not in KINDS:
        raise ValueError(f"manifest entry has unknown kind {entry.get('kind')!r}: {entry}")
    if "path" not in entry:
        raise ValueError(f"manifest entry without 'path': {entry}")
    path = Path(entry["path"])
    base = {k: v for k, v in entry.items()}
    if not path.exists():
        return [{**base, "status": "missing"}]
    try:
        data = _read_json(path)
    except (OSError, ValueError) as err:
        return [{**base, "status": f"unreadable: {err}"}]
    if isinstance(data, dict) and data.get("skipped"):  # a run the pipeline could not make, and why
        return [{**base, "status": "skipped", "skip_reason": str(data["skipped"])}]
    meta_path = path.with_name("meta.json")
    meta = {}
    if meta_path.exists() and meta_path != path:
        try:
            raw = _read_json(meta_path)
            meta = flatten({k: raw[k] for k in META_KEEP if k in raw}, "meta.")
        except (OSError, ValueError):
            meta = {"meta.error": "unreadable meta.json"}
    if entry["kind"] == "fold_sweep":
        protocol = flatten(data.get("protocol", {}), "protocol.")
        rows = []
        for point in data.get("rows", []):
            rows.append(normalise({**base, "status": "ok", **protocol, **flatten(point), **meta}))
        return rows or [{**base, "status": "empty"}]
    # `sf_mamba bench/flops` write {"meta": ..., "results": [...]}, `probe` {"summary": [...], ...},
    # the trainers a flat mapping with meta.json beside it
    records = [data]
    if isinstance(data, dict):
        if isinstance(data.get("meta"), dict):
            meta = {**flatten({k: data["meta"][k] for k in META_KEEP if k in data["meta"]}, "meta."), **meta}
        for key in ("results", "summary"):
            if isinstance(data.get(key), list) and data[key]:
                records = data[key]
                break
    rows = []
    for record in records:
        metrics = flatten(record) if isinstance(record, dict) else {"value": record}
        # the manifest describes the experiment; a metric of the same name must not overwrite it
        metrics = {k: v for k, v in metrics.items() if k not in base}
        rows.append(normalise({**base, "status": "ok", **metrics, **meta}))
    return rows


def gather(manifest: list[dict]):
    import pandas as pd

    if not isinstance(manifest, list):
        raise ValueError("manifest must be a JSON list of entries")
    rows = [row for entry in manifest for row in gather_entry(entry)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["kind", "rq", "experiment", "status", "path"])
    lead = [c for c in ("kind", "rq", "experiment", "seed", "status", "label", "family", "model", "scan",
                        "attention", "aux_tokens", "aux_init", "aux_discard", "match_params", "fold",
                        "batch_size", "img_size", "reference", "top1", "top5", "params_m", "macs_g",
                        "throughput", "miou", "device", "path") if c in frame.columns]
    rest = sorted(c for c in frame.columns if c not in lead)
    return frame[lead + rest]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="JSON list of expected result files")
    parser.add_argument("--out", required=True, help="tidy CSV to write")


def main(args: argparse.Namespace) -> int:
    from sf_mamba.utils.cli import check_output_path, fail

    out = check_output_path(args.out)
    try:
        manifest = _read_json(Path(args.manifest))
    except (OSError, ValueError) as err:
        fail(f"--manifest {args.manifest!r}: {err}")
    try:
        frame = gather(manifest)
    except (OSError, ValueError) as err:
        fail(str(err))
    atomic_write_text(out, frame.to_csv(index=False))
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    print(f"gathered {len(frame)} rows into {out}: {counts}")
    return 0
