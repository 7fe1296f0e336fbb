"""RQ5 detection in the DAG: the smoke job in the default config, the COCO jobs in the paper config,
and, without mmcv's compiled ops, a row reported as skipped with the reason (a real run of rq5_det)."""

from __future__ import annotations

import os

import pytest

from workflow_support import ROOT, SNAKEMAKE, smk, workflow_copy

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed (pipeline extra)")


def _jobs(output: str, rule: str) -> list[str]:
    """The `output:` line of every job of `rule` in a dry run's listing."""
    blocks = output.split(f"rule {rule}:")[1:]
    return [next(line.split("output:", 1)[1].strip() for line in b.splitlines() if "output:" in line)
            for b in blocks]


def test_default_dry_run_has_the_detection_smoke(tmp_path):
    proc = smk(workflow_copy(tmp_path), "-n", "rq5_det")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert _jobs(out, "det_train") == ["results/det/micro_smoke/seed0/metrics.json"]
    assert _jobs(out, "data_det_smoke") == ["resources/data/det_smoke"]
    assert "results/rq5_det/table.md" in out


def test_paper_dry_run_lists_the_coco_jobs(tmp_path):
    proc = smk(workflow_copy(tmp_path), "-n", "rq5_det", "--configfile", "configs/paper.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert sorted(_jobs(out, "det_train")) == [f"results/det/coco_{fam}_{v}/seed0/metrics.json"
                                               for fam in ("mv", "sf") for v in "bst"]
    for v in "tsb":
        assert f"configs/det/cascade-mask-rcnn_sf_mamba_{v}_fpn_3x_coco.py" in out
        assert f"configs/det/cascade-mask-rcnn_sf_mamba_{v}_uni_fpn_3x_coco.py" in out
    assert "data_det_smoke" not in out  # COCO is external


def test_without_compiled_ops_the_row_is_reported_skipped(tmp_path):
    """mmcv-lite simulated by a stand-in `mmcv` package without `_ext` first on PYTHONPATH."""
    wf = workflow_copy(tmp_path)
    fake = tmp_path / "mmcv_lite"
    (fake / "mmcv").mkdir(parents=True)
    (fake / "mmcv" / "__init__.py").write_text("__version__ = '2.1.0'\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), str(ROOT), str(ROOT / "kernels")])}
    proc = smk(wf, "-c1", "rq5_det", env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    table = (wf / "results" / "rq5_det" / "table.md").read_text()
    assert "skipped: det-train needs mmcv's compiled ops (nms, roi_align_forward, roi_align_backward)" in table
    assert "tools/install_mmcv.py" in table
    assert not (wf / "results" / "det" / "micro_smoke" / "seed0" / "work").exists()  # nothing was launched
