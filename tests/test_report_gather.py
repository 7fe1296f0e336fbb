"""Gathering: manifest entries -> one tidy CSV; missing runs are rows, never dropped or invented."""

import json
from argparse import Namespace

import pandas as pd
import pytest

from sf_mamba.report import gather as g


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def test_train_entry_reads_metrics_and_meta(tmp_path):
    p = write(tmp_path / "r/seed0/metrics.json", {"top1": 81.5, "params": 31_800_000, "macs": 4.4e9,
                                                  "throughput_protocol": {"device_name": "A100", "batch_size": 128}})
    write(tmp_path / "r/seed0/meta.json", {"git": {"sha": "abc", "dirty": False}, "config_sha256": "ff"})
    rows = g.gather_entry({"kind": "train", "rq": "rq1_scan", "path": p, "experiment": "e", "seed": 0})
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok" and row["top1"] == 81.5
    assert row["params_m"] == pytest.approx(31.8) and row["macs_g"] == pytest.approx(4.4)
    assert row["device"] == "A100"                      # alias from the nested protocol
    assert row["meta.git.sha"] == "abc" and row["meta.config_sha256"] == "ff"


def test_missing_file_is_a_missing_row(tmp_path):
    rows = g.gather_entry({"kind": "bench", "rq": "rq4_sizes", "path": str(tmp_path / "nope.json"),
                           "experiment": "e"})
    assert rows == [{"kind": "bench", "rq": "rq4_sizes", "path": str(tmp_path / "nope.json"),
                     "experiment": "e", "status": "missing"}]


def test_manifest_description_wins_over_metric_names(tmp_path):
    p = write(tmp_path / "m.json", {"model": "something_else", "top1": 1.0})
    (row,) = g.gather_entry({"kind": "train", "rq": "rq1_scan", "path": p, "model": "sf_mamba_t"})
    assert row["model"] == "sf_mamba_t"


def test_fold_sweep_expands_to_one_row_per_point(tmp_path):
    p = write(tmp_path / "fs.json", {"protocol": {"device": "cpu", "backend": "torch"}, "rows": [
        {"batch": 8, "length": 49, "channels": 64, "fold": 1, "time_ms": 2.0, "speedup_vs_fold1": 1.0,
         "max_abs_diff": 0.0, "equal": True},
        {"batch": 8, "length": 49, "channels": 64, "fold": 4, "time_ms": 1.0, "speedup_vs_fold1": 2.0,
         "max_abs_diff": 1e-6, "equal": True}]})
    rows = g.gather_entry({"kind": "fold_sweep", "rq": "rq2_fold", "path": p})
    assert [r["fold"] for r in rows] == [1, 4]
    assert rows[0]["protocol.device"] == "cpu"


def test_unknown_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        g.gather_entry({"kind": "nonsense", "path": "x"})


def test_main_writes_csv_with_every_expected_row(tmp_path):
    ok = write(tmp_path / "a/metrics.json", {"top1": 50.0})
    manifest = [{"kind": "train", "rq": "rq1_scan", "path": ok, "experiment": "a", "seed": 0},
                {"kind": "train", "rq": "rq1_scan", "path": str(tmp_path / "b/metrics.json"),
                 "experiment": "b", "seed": 0}]
    mpath = write(tmp_path / "manifest.json", manifest)
    out = tmp_path / "runs.csv"
    assert g.main(Namespace(manifest=mpath, out=str(out))) == 0
    frame = pd.read_csv(out)
    assert list(frame["experiment"]) == ["a", "b"]
    assert list(frame["status"]) == ["ok", "missing"]
    assert pd.isna(frame.loc[1, "top1"])                 # nothing filled in for the missing run
