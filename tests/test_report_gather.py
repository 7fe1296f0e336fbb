"""Gathering: manifest entries -> one tidy CSV; missing runs are rows, never dropped or invented; each
result kind is read exactly as its schema (sf_mamba.report.schema) says, and the real producers
write what their schema requires."""

import json
from argparse import Namespace

import pandas as pd
import pytest

from sf_mamba.cli import main as cli
from sf_mamba.report import gather as g
from sf_mamba.report.schema import KINDS, LAYOUTS, SCHEMAS

TRAIN = {"model": "sf_mamba_t", "top1": 81.5, "top5": 95.0, "loss": 0.9, "params": 31_800_000}


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def test_train_entry_reads_metrics_and_meta(tmp_path):
    p = write(tmp_path / "r/seed0/metrics.json", TRAIN)
    write(tmp_path / "r/seed0/meta.json", {"git": {"sha": "abc", "dirty": False}, "config_sha256": "ff",
                                           "device": {"device_name": "A100"}})
    rows = g.gather_entry({"kind": "train", "rq": "rq1_scan", "path": p, "experiment": "e", "seed": 0})
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok" and row["top1"] == 81.5
    assert row["params_m"] == pytest.approx(31.8) and "macs_g" not in row   # MACs come from `flops`
    assert row["device"] == "A100"                                          # meta.device.device_name
    assert row["meta.git.sha"] == "abc" and row["meta.config_sha256"] == "ff"


def test_each_canonical_column_comes_from_its_one_source_key(tmp_path):
    """No alternative spellings: a bench record with `img_per_s` instead of `throughput` is invalid."""
    good = write(tmp_path / "b.json", {"results": [{"model": "m", "throughput": 120.0, "batch_size": 16,
                                                    "device_name": "cpu (x86_64)", "params": 2e6}], "meta": {}})
    (row,) = g.gather_entry({"kind": "bench", "rq": "rq1_scan", "path": good, "experiment": "e"})
    assert (row["status"], row["throughput"], row["device"], row["params_m"]) == ("ok", 120.0, "cpu (x86_64)", 2.0)
    alias = write(tmp_path / "a.json", {"results": [{"model": "m", "img_per_s": 120.0, "batch_size": 16,
                                                     "device_name": "cpu"}]})
    (row,) = g.gather_entry({"kind": "bench", "rq": "rq1_scan", "path": alias, "experiment": "e"})
    assert row["status"] == "invalid: bench result without throughput" and "throughput" not in row
    seg = write(tmp_path / "s/metrics.json", {"mIoU": 41.0, "mAcc": 50.0, "aAcc": 80.0, "macs": 2e9})
    (row,) = g.gather_entry({"kind": "seg", "rq": "rq5_seg", "path": seg, "experiment": "s"})
    assert (row["miou"], row["macs_g"]) == (41.0, 2.0)


def test_file_in_the_wrong_layout_is_unreadable_not_guessed(tmp_path):
    flat = write(tmp_path / "f.json", {"model": "m", "params": 1, "macs": 2})   # flops files hold `results`
    (row,) = g.gather_entry({"kind": "flops", "rq": "rq4_sizes", "path": flat})
    assert row["status"] == "unreadable: expected a 'results' list (results layout)"


def test_missing_file_is_a_missing_row(tmp_path):
    rows = g.gather_entry({"kind": "bench", "rq": "rq4_sizes", "path": str(tmp_path / "nope.json"),
                           "experiment": "e"})
    assert rows == [{"kind": "bench", "rq": "rq4_sizes", "path": str(tmp_path / "nope.json"),
                     "experiment": "e", "status": "missing"}]


def test_manifest_description_wins_over_metric_names(tmp_path):
    p = write(tmp_path / "m.json", {**TRAIN, "model": "something_else"})
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
    assert rows[0]["protocol.device"] == "cpu" and rows[0]["device"] == "cpu"


def test_unknown_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown kind 'nonsense'"):
        g.gather_entry({"kind": "nonsense", "path": "x"})


def test_main_writes_csv_with_every_expected_row(tmp_path):
    ok = write(tmp_path / "a/metrics.json", {**TRAIN, "top1": 50.0})
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


def test_schemas_are_complete():
    for kind, schema in SCHEMAS.items():
        assert schema.kind == kind and schema.layout in LAYOUTS and schema.required and schema.producer
        assert set(schema.columns) <= {"params_m", "macs_g", "throughput", "miou", "device"}
        divisors = dict(schema.columns.values())
        assert divisors.get("params", 1e6) == 1e6 and divisors.get("macs", 1e9) == 1e9, (kind, divisors)


def test_every_kind_the_workflow_registers_has_a_schema():
    import re
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "workflow/rules"
    text = "".join(p.read_text() for p in rules.glob("*.smk"))
    kinds = set(re.findall(r'"kind": "([a-z_]+)"', text))
    assert kinds and kinds <= set(KINDS), kinds - set(KINDS)


# ---------------------------------------------------------------- the producers write their schema
def _gathered(kind, path):
    rows = g.gather_entry({"kind": kind, "rq": "x", "path": str(path), "experiment": "e"})
    assert rows and all(r["status"] == "ok" for r in rows), rows
    return rows


def test_flops_and_bench_write_their_schema(tmp_path):
    kwargs = '{"scan":"swap"}'
    assert cli(["flops", "--model", "sf_mamba_micro", "--model-kwargs", kwargs, "--img-size", "32",
                "--out", str(tmp_path / "flops.json")]) == 0
    (row,) = _gathered("flops", tmp_path / "flops.json")
    assert row["macs_g"] > 0 and row["params_m"] > 0
    assert cli(["bench", "--model", "sf_mamba_micro", "--model-kwargs", kwargs, "--img-size", "32",
                "--batch", "2", "--warmup", "0", "--iters", "1", "--device", "cpu",
                "--out", str(tmp_path / "bench.json")]) == 0
    (row,) = _gathered("bench", tmp_path / "bench.json")
    assert row["throughput"] > 0 and row["device"] and row["params_m"] == pytest.approx(
        json.loads((tmp_path / "flops.json").read_text())["results"][0]["params"] / 1e6)


def test_fold_sweep_and_probe_write_their_schema(tmp_path):
    assert cli(["fold-sweep", "--out", str(tmp_path / "fs.json"), "--batch-sizes", "2", "--lengths", "8",
                "--channels", "4", "--folds", "1", "2", "--repeats", "1"]) == 0
    rows = _gathered("fold_sweep", tmp_path / "fs.json")
    assert [r["fold"] for r in rows] == [1, 2] and rows[0]["device"] == "cpu"
    assert cli(["probe", "--model", "sf_mamba_micro", "--scan", "swap", "--attention", "off",
                "--img-size", "32", "--batch", "1", "--num-queries", "1",
                "--out-dir", str(tmp_path / "probe")]) == 0
    (row,) = _gathered("probe", tmp_path / "probe" / "probe.json")
    assert 0.0 <= row["future_mass_ratio"] <= 1.0
