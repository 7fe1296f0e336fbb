"""The future-context jobs in the DAG (dry runs): the default subset, the CPU study, bad config."""

import pytest

from workflow_support import SNAKEMAKE, job_counts as counts, smk, workflow_copy

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed (pipeline extra)")


def dry_run(wf, *args: str) -> tuple[int, str]:
    proc = smk(wf, *args, "-n", "--quiet", "rules")
    return proc.returncode, proc.stdout + proc.stderr


def test_default_dag_has_the_future_context_subset(tmp_path):
    rc, out = dry_run(workflow_copy(tmp_path), "rq3_aux")
    assert rc == 0, out
    assert counts(out)["fc_train"] == 9 and counts(out)["render_rq3_aux"] == 1


def test_cpu_study_runs_the_full_matrix_and_nothing_else(tmp_path):
    rc, out = dry_run(workflow_copy(tmp_path), "rq3_aux", "--configfile", "configs/cpu_study.yaml")
    assert rc == 0, out
    c = counts(out)
    assert c["fc_train"] == 11 * 3, c
    assert "train" not in c and "probe" not in c, c


def test_unknown_future_context_row_is_named(tmp_path):
    rc, out = dry_run(workflow_copy(tmp_path), "--config", "rq3_aux={'future_context': {'experiments': ['nope']}}")
    assert rc != 0
    assert "'nope'" in out and "rq3_aux.future_context.experiments" in out
