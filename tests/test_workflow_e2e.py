"""The default config (CPU smoke) end to end: every table and figure, then incrementality."""

import re
import time

import pandas as pd
import pytest

from workflow_support import SNAKEMAKE, job_counts, smk, workflow_copy

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed")]
RQ_FILES = {
    "rq1_scan": ["table.md", "table.tex", "table.csv", "accuracy_throughput.png", "accuracy_throughput.pdf"],
    "rq2_fold": ["table.md", "table.tex", "table.csv", "speedup.png", "speedup.pdf"],
    "rq3_aux": ["table.md", "table.tex", "table.csv", "aux.png", "aux.pdf"],
    "rq4_sizes": ["table.md", "table.tex", "table.csv", "pareto.png", "pareto.pdf"],
    "rq5_seg": ["table.md", "table.tex", "table.csv"],
}


@pytest.mark.timeout(3600)
def test_default_dag_runs_end_to_end_and_is_incremental(tmp_path):
    from PIL import Image

    wf = workflow_copy(tmp_path)
    start = time.monotonic()
    proc = smk(wf, "-c2", timeout=3500)
    elapsed = time.monotonic() - start
    print(f"default DAG wall time: {elapsed:.0f} s")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    results = wf / "results"
    for rq, names in RQ_FILES.items():
        for name in names:
            for base in (results / rq, results / "report" / rq):
                path = base / name
                assert path.exists() and path.stat().st_size > 0, path
                if name.endswith(".png"):
                    with Image.open(path) as im:
                        assert im.size[0] > 300 and im.size[1] > 200
    for name in ("reproduction.md", "reproduction.tex", "reproduction.csv", "README.md", "runs.csv",
                 "report.html"):
        assert (results / "report" / name).exists(), name

    runs = pd.read_csv(results / "report" / "runs.csv", low_memory=False)
    assert (runs["status"] == "ok").all(), runs[runs["status"] != "ok"][["kind", "experiment", "path"]]
    train = runs[runs["kind"] == "train"]
    assert train["top1"].notna().all() and train["meta.git.sha"].notna().any()
    rep = pd.read_csv(results / "report" / "reproduction.csv", keep_default_na=False)
    params = rep[(rep["model"] == "mambavision_t") & (rep["metric"] == "params_m")].iloc[0]
    assert params["reproduced"] != "missing"                       # counted on CPU
    top1 = rep[(rep["model"] == "mambavision_t") & (rep["metric"] == "top1")].iloc[0]
    assert top1["verdict"] == "missing"                             # no ImageNet on CPU: never invented
    fold = pd.read_csv(results / "rq2_fold" / "table.csv")
    assert "equal" in fold.columns

    # nothing changed -> nothing to do
    proc = smk(wf, "-n", "-c2")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]

    # one experiment changed -> its jobs and the gathering, nothing else
    sheet = wf / "configs/experiments/smoke.tsv"
    lines = sheet.read_text().splitlines()
    idx = next(i for i, line in enumerate(lines) if line.startswith("aux1\t"))
    cells = lines[idx].split("\t")
    cells[-1] = "optim.lr=1e-3"                                    # `overrides` column
    lines[idx] = "\t".join(cells)
    sheet.write_text("\n".join(lines) + "\n")
    proc = smk(wf, "-n", "-c2", "--quiet", "rules")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts.get("train") == 1, counts
    for rule in ("bench", "flops", "fold_sweep", "fold_bench", "seg_train", "data_digits"):
        assert rule not in counts, counts
    assert counts.get("gather", 0) >= 1 and counts.get("gather_all") == 1, counts
    assert re.search(r"render_rq3_aux\s+1", proc.stdout + proc.stderr)
