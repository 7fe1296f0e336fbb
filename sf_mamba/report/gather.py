"""``sf_mamba gather``: collect every expected result file into one tidy CSV.

Input is a *manifest*: a JSON list written by the workflow from the validated experiment sheet,
one entry per expected result file::

    {"kind": "train", "rq": "rq1_scan", "path": "results/runs/swap_attn/seed0/metrics.json",
     "experiment": "swap_attn", "seed": 0, "scan": "swap", ...}

Each entry becomes one row (a ``fold_sweep`` file becomes one row per measured point) with

- the manifest's description columns (experiment, seed, scan, attention, ...);
- ``status``: ``ok``, or ``missing`` when the file does not exist (a missing run is a row, never a
  silently shorter table; nothing is filled in);
- the file's scalar metrics (nested mappings flattened as ``a.b``) and the canonical columns
  ``params_m``, ``macs_g``, ``throughput`` (img/s), ``miou``, ``device``, each read from the one key
  that the kind's schema names (``sf_mamba.report.schema``: one schema per result kind);
- provenance from the file's ``meta`` or a ``meta.json`` beside it, prefixed ``meta.``.

A file that lacks a key its schema requires is an ``invalid: ...`` row, not a guess.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sf_mamba.report.schema import CANONICAL_COLUMNS, KINDS, SCHEMAS
from sf_mamba.utils.io import atomic_write_text

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


def canonical_columns(kind: str, row: dict) -> dict:
    """The canonical columns of one row, each from the one source key its kind's schema names."""
    out = {}
    for canon, (source, divisor) in SCHEMAS[kind].columns.items():
        value = row.get(source)
        if isinstance(value, bool) or value is None:
            continue
        out[canon] = value / divisor if isinstance(value, (int, float)) and divisor != 1.0 else value
    return out


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _meta_columns(meta: Any) -> dict:
    return flatten({k: meta[k] for k in META_KEEP if k in meta}, "meta.") if isinstance(meta, dict) else {}


def _records(kind: str, data: Any) -> tuple[list, dict]:
    """(records, extra columns shared by them) of a file laid out as its kind's schema says."""
    layout = SCHEMAS[kind].layout
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object ({layout} layout), got {type(data).__name__}")
    if layout == "flat":
        return [data], {}
    key = {"results": "results", "summary": "summary", "rows": "rows"}[layout]
    if not isinstance(data.get(key), list):
        raise ValueError(f"expected a {key!r} list ({layout} layout)")
    shared = _meta_columns(data.get("meta"))
    if layout == "rows":
        shared.update(flatten(data.get("protocol", {}), "protocol."))
    return data[key], shared


def gather_entry(entry: dict) -> list[dict]:
    """Rows for one manifest entry: one per record of the file (a fold sweep: one per point)."""
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"manifest entry has unknown kind {kind!r} (kinds: {', '.join(KINDS)}): {entry}")
    if "path" not in entry:
        raise ValueError(f"manifest entry without 'path': {entry}")
    path = Path(entry["path"])
    base = dict(entry)
    if not path.exists():
        return [{**base, "status": "missing"}]
    try:
        data = _read_json(path)
        if isinstance(data, dict) and data.get("skipped"):  # a run the pipeline could not make, and why
            return [{**base, "status": "skipped", "skip_reason": str(data["skipped"])}]
        records, shared = _records(kind, data)
    except (OSError, ValueError) as err:
        return [{**base, "status": f"unreadable: {err}"}]
    meta_path = path.with_name("meta.json")
    if meta_path.exists() and meta_path != path:
        try:
            shared = {**_meta_columns(_read_json(meta_path)), **shared}
        except (OSError, ValueError):
            shared = {"meta.error": "unreadable meta.json", **shared}
    rows = []
    for record in records:
        metrics = flatten(record) if isinstance(record, dict) else {}
        missing = [k for k in SCHEMAS[kind].required if metrics.get(k) is None]
        if missing:
            rows.append({**base, "status": f"invalid: {kind} result without {', '.join(missing)}"})
            continue
        # the manifest describes the experiment; a metric of the same name must not overwrite it
        row = {**base, "status": "ok", **{k: v for k, v in metrics.items() if k not in base}, **shared}
        rows.append({**row, **canonical_columns(kind, row)})
    return rows or [{**base, "status": "empty"}]


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
                        "batch_size", "img_size", "reference", "top1", "top5", *CANONICAL_COLUMNS,
                        "path") if c in frame.columns]
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
