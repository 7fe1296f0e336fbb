"""RQ5 detection in the report: gathered det metrics.json (ok, skipped under mmcv-lite, missing),
the box/mask AP table and the reported-vs-reproduced rows (numbers below are made up for the test)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from sf_mamba.report import gather as g
from sf_mamba.report import render as r

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "reference" / "published.yaml"
SKIP_REASON = "det-train needs mmcv's compiled ops (nms), which this environment lacks"


def _write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _runs(tmp: Path) -> Path:
    ok = {"box_ap": 51.3, "box_ap_50": 70.1, "mask_ap": 44.0, "mask_ap_50": 67.5, "kind": "train",
          "params": 86e6}
    man = [
        {"kind": "det", "rq": "rq5_det", "path": _write(tmp / "a/metrics.json", ok), "seed": 0,
         "experiment": "coco_mv_t", "label": "MambaVision-T + Cascade", "reference": "mambavision_t"},
        {"kind": "det", "rq": "rq5_det", "path": _write(tmp / "b/metrics.json", {"kind": "train", "skipped": SKIP_REASON}),
         "seed": 0, "experiment": "smoke", "label": "micro smoke", "reference": ""},
        {"kind": "det", "rq": "rq5_det", "path": str(tmp / "c/metrics.json"), "seed": 0,
         "experiment": "coco_sf_s", "label": "SF-Mamba-S + Cascade", "reference": "sf_mamba_s"},
    ]
    out = tmp / "runs.csv"
    g.gather(man).to_csv(out, index=False)
    return out


def test_published_detection_numbers_are_quoted_with_their_source():
    ref = yaml.safe_load(REFERENCE.read_text())
    det = {(e["key"], e["metric"]): e for e in ref["entries"] if e["metric"] in ("box_ap", "mask_ap")}
    assert {k: e["value"] for k, e in det.items()} == {
        ("mambavision_t", "box_ap"): 51.1, ("mambavision_t", "mask_ap"): 44.3,
        ("mambavision_s", "box_ap"): 52.3, ("mambavision_s", "mask_ap"): 45.2,
        ("mambavision_b", "box_ap"): 52.8, ("mambavision_b", "mask_ap"): 45.7}
    assert all(e["source"] == "mv_det" for e in det.values())
    assert "Cascade Mask R-CNN" in ref["sources"]["mv_det"]
    assert ref["tolerances"]["box_ap"] == {"kind": "absolute", "value": 0.5}


def test_skipped_run_is_a_row_with_its_reason(tmp_path):
    runs = r.load_runs(_runs(tmp_path))
    skipped = runs[runs["experiment"] == "smoke"].iloc[0]
    assert skipped["status"] == "skipped" and skipped["skip_reason"] == SKIP_REASON
    table = r.det_table(runs, yaml.safe_load(REFERENCE.read_text())).set_index("model")
    assert table.loc["micro smoke", "status"] == f"skipped: {SKIP_REASON}"
    assert table.loc["micro smoke", "box AP (%)"] == r.mean_std([])
    assert table.loc["MambaVision-T + Cascade", "box AP (%)"] == "51.30 (n=1)"
    assert table.loc["MambaVision-T + Cascade", "MambaVision published box / mask AP"] == "51.1 / 44.3"
    # an SF-Mamba row is compared with the MambaVision row of its size; a missing run says so
    assert table.loc["SF-Mamba-S + Cascade", "MambaVision published box / mask AP"] == "52.3 / 45.2"
    assert table.loc["SF-Mamba-S + Cascade", "status"] == "missing"


def test_rq5_det_table_and_reproduction_rows(tmp_path):
    runs_csv = _runs(tmp_path)
    out = tmp_path / "report"
    r.render(runs_csv, out, all_=True, reference_path=REFERENCE)
    md = (out / "rq5_det" / "table.md").read_text()
    assert "RQ5 - object detection" in md and "skipped: " + SKIP_REASON in md
    assert (out / "rq5_det" / "table.tex").exists()
    rep = pd.read_csv(out / "reproduction.csv")
    row = rep[(rep["model"] == "mambavision_t") & (rep["metric"] == "box_ap")].iloc[0]
    assert row["reproduced"] == "51.30" and row["verdict"] == "reproduced"  # |51.3 - 51.1| <= 0.5
    row = rep[(rep["model"] == "mambavision_t") & (rep["metric"] == "mask_ap")].iloc[0]
    assert row["verdict"] == "reproduced"
    row = rep[(rep["model"] == "mambavision_b") & (rep["metric"] == "box_ap")].iloc[0]
    assert row["verdict"] == "missing"
    assert "rq5_det/table.md" in (out / "README.md").read_text()
