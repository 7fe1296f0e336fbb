"""RQ2: the static model's predicted fold speed-up sits beside every measured fold-sweep point, labelled."""

import json

import pandas as pd
import pytest

from sf_mamba.report import gather as g
from sf_mamba.report import render as r
from sf_mamba_kernels.selective_scan import predicted

COLUMN = "speed-up vs k=1, predicted (static, sm_90)"


def fake_speedup(batch, length, channels, d_state, fold, dtype):
    """A stand-in static model: covers d_state 8 only, speed-up grows with k."""
    return None if d_state != 8 else 1.0 + 0.1 * (fold - 1) + batch / 1000


@pytest.fixture
def rq2_runs(tmp_path):
    sweep = tmp_path / "fold.json"
    rows = [{"batch": b, "length": 51, "channels": 320, "d_state": n, "fold": k, "time_ms": 10.0 / k,
             "speedup_vs_fold1": float(k), "max_abs_diff": 0.0, "equal": True}
            for b, n in ((8, 8), (4, 16)) for k in (1, 2, 4)]
    sweep.write_text(json.dumps({"protocol": {"device": "cuda", "backend": "triton", "dtype": "bfloat16"},
                                 "rows": rows}))
    return g.gather([{"kind": "fold_sweep", "rq": "rq2_fold", "path": str(sweep)}])


def read_parts(out):
    table = pd.read_csv(out / "table.csv", keep_default_na=False, dtype=str)
    return {part: frame for part, frame in table.groupby("part")}


def test_prediction_beside_each_measured_point(tmp_path, rq2_runs, monkeypatch):
    seen = []
    monkeypatch.setattr(predicted, "fold_speedup", lambda *a: seen.append(a) or fake_speedup(*a))
    monkeypatch.setattr(predicted, "time_us", lambda *a, **k: 12.5)
    r.render_rq2(rq2_runs, tmp_path / "rq2")
    parts = read_parts(tmp_path / "rq2")
    sweep = next(frame for part, frame in parts.items() if part.startswith("op-level fold sweep"))
    measured = sweep[pd.to_numeric(sweep["batch"]) == 8].sort_values("fold k")
    assert list(measured["speed-up vs k=1"]) == ["1.00", "2.00", "4.00"]
    assert list(measured[COLUMN]) == ["1.01", "1.11", "1.31"]
    # the static model has no figure for d_state 16: said so, not filled in
    assert set(sweep[pd.to_numeric(sweep["batch"]) == 4][COLUMN]) == {"no figure"}
    # asked with the measured point's own batch, length, channels, d_state, fold and dtype
    assert (8, 51, 320, 8, 2, "bfloat16") in seen
    static = next(frame for part, frame in parts.items() if "not measured" in part)
    assert set(static["shape"]) == {"MambaVision-T stage 3", "MambaVision-T stage 4"}
    assert set(static["forward µs, predicted (static, sm_90)"]) == {"12.5"}
    assert "predicted (static, sm_90)" in (tmp_path / "rq2" / "table.md").read_text()


def test_without_a_static_model_nothing_is_invented(tmp_path, rq2_runs, monkeypatch):
    monkeypatch.setattr(predicted, "_model", lambda: None)
    r.render_rq2(rq2_runs, tmp_path / "rq2")
    parts = read_parts(tmp_path / "rq2")
    for part, frame in parts.items():
        for column in frame.columns:
            if "predicted" in column:
                assert set(frame[column]) <= {"no figure", ""}, (part, column)
