"""The Snakemake DAG: lint, validation errors, the paper config's dry run (no jobs executed)."""

import re

import pytest
import yaml

from workflow_support import ROOT, SNAKEMAKE, job_counts, smk, workflow_copy

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed (pipeline extra)")
RQ_JOBS = {  # a rule whose jobs only exist for that research question
    "rq1_scan": "render_rq1_scan", "rq2_fold": "fold_sweep", "rq3_aux": "probe",
    "rq4_sizes": "flops", "rq5_seg": "seg_train", "rq5_det": "det_train",
}


def test_lint_is_clean(tmp_path):
    proc = smk(workflow_copy(tmp_path), "--lint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for" not in out, out


def test_default_dry_run_covers_every_research_question(tmp_path):
    proc = smk(workflow_copy(tmp_path), "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = job_counts(proc.stdout + proc.stderr)
    for rq, rule in RQ_JOBS.items():
        assert counts.get(rule, 0) > 0, (rq, counts)
    assert counts["train"] == 15
    assert counts["fc_train"] == 9          # RQ3's future-context subset: uni, swap, bi-parallel x 3 seeds


def test_paper_dry_run_lists_jobs_for_every_research_question(tmp_path):
    wf = workflow_copy(tmp_path)
    paper = yaml.safe_load((wf / "configs/paper.yaml").read_text())
    proc = smk(wf, "-n", "--quiet", "rules", "--configfile", "configs/paper.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = job_counts(proc.stdout + proc.stderr)
    for rq, rule in RQ_JOBS.items():
        assert counts.get(rule, 0) > 0, (rq, counts)
    assert counts["fold_lut"] == 1 and counts["fold_bench"] == 3 * 5 * 6 * 3
    import pandas as pd

    sheet = pd.read_csv(wf / "configs/experiments/paper.tsv", sep="\t", dtype=str, keep_default_na=False)
    expected = sum(len(s.split(",")) if s else len(paper["seeds"]) for s in sheet["seeds"])
    assert counts["train"] == expected == 68           # 3 seeds; 1 for the L rows
    assert counts["seg_train"] == 6
    # ADE20K backbones start from the ImageNet runs: the segmentation jobs wait for them
    proc = smk(wf, "results/seg/ade20k_mv_b/seed0/metrics.json", "-n", "--configfile", "configs/paper.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "results/runs/mv_b/seed0/metrics.json" in out


@pytest.mark.parametrize("override,name", [
    (["--config", "bogus_key=1"], "bogus_key"),
    (["--config", "bench={'batchsize': 3}"], "batchsize"),
    (["--config", "cluster={'executor': 'kubernetes'}"], "kubernetes"),
])
def test_bad_config_fails_validation_naming_the_key(tmp_path, override, name):
    proc = smk(workflow_copy(tmp_path), "-n", *override)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert name in out and ("not valid" in out.lower() or "validation" in out.lower()), out


def failing_dry_run_with_sheet_edit(tmp_path, old: str, new: str) -> str:
    """Replace the first `old` in the smoke sheet by `new`; the dry run must fail: its output."""
    wf = workflow_copy(tmp_path)
    sheet = wf / "configs/experiments/smoke.tsv"
    text = sheet.read_text()
    assert old in text, f"the smoke sheet no longer holds {old!r}"
    sheet.write_text(text.replace(old, new, 1))
    proc = smk(wf, "-n")
    assert proc.returncode != 0, proc.stdout
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("old, new, message", [
    ("\tcross4\tfalse", "\tcross8\tfalse", ["cross4_noattn", "cross8"]),
    # a row tagged with a question nobody registered would never be trained: an error naming it
    ("swap_attn\trq1_scan,", "swap_attn\trq9_nope,", ["row 'swap_attn': rqs names 'rq9_nope'"]),
])
def test_bad_experiment_sheet_names_row_and_value(tmp_path, old, new, message):
    out = failing_dry_run_with_sheet_edit(tmp_path, old, new)
    assert all(m in out for m in message), out


def test_volatile_values_are_not_params(tmp_path):
    """No git sha or timestamp in any rule's params (they would retrain everything per commit)."""
    for path in (ROOT / "workflow/rules").glob("*.smk"):
        text = path.read_text()
        for word in ("git ", "git_", "datetime", "time.time", "utc_now", "getpid"):
            assert word not in text, f"{path.name} mentions {word}"


def test_every_registered_question_has_a_target_and_a_renderer(tmp_path):
    """The workflow's research questions (registered in common.smk) are the report's, one target each."""
    from sf_mamba.report import render

    proc = smk(workflow_copy(tmp_path), "--list-target-rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    targets = {line.strip() for line in proc.stdout.splitlines()}
    questions = {t for t in targets if re.fullmatch(r"rq\d+_[a-z0-9_]+", t)}
    assert questions == set(render.RQS), (questions, render.RQS)
    assert {"all", *(f"render_{rq}" for rq in render.RQS)} <= targets
