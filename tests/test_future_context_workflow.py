"""The future-context jobs in the DAG (dry runs): the default subset, the CPU study, bad config."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed (pipeline extra)")


def workflow_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "wf"
    dst.mkdir()
    shutil.copy(ROOT / "Snakefile", dst)
    for name in ("workflow", "configs", "profiles"):
        shutil.copytree(ROOT / name, dst / name)
    return dst


def dry_run(wf: Path, *args: str) -> tuple[int, str]:
    proc = subprocess.run([str(SNAKEMAKE), *args, "-n", "--quiet", "rules"], cwd=wf, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.returncode, proc.stdout + proc.stderr


def counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:", 1)[-1]
    return {m.group(1): int(m.group(2)) for m in (re.match(r"^(\S+)\s+(\d+)$", line.strip())
                                                  for line in block.splitlines()) if m and m.group(1) != "total"}


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
