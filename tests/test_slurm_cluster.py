"""The CI Slurm cluster itself (ci/slurm_up.sh): scheduling, accounting, the fake GPU, failures.

Real Slurm, no mocks: skipped with the reason where the cluster is not up, a failure under
SF_MAMBA_REQUIRE_SLURM=1 (see tests/slurm_support.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# fixtures (slurm_cluster, slurm_jobs, digits_data) come from the slurm_support plugin (tests/conftest.py)
from slurm_support import sacct_job, wait_job_state, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def _sbatch(cluster, tmp_path: Path, wrap: str, *extra: str) -> int:
    cmd = ["sbatch", "--parsable", "-p", cluster.partition, "-t", "2", "-c", "1", "--mem", "200M",
           "-o", str(tmp_path / "slurm-%j.out"), "-D", str(tmp_path), *extra, "--wrap", wrap]
    if cluster.account:
        cmd[2:2] = ["-A", cluster.account]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.fail(f"sbatch failed: {out.stderr}")
    jid = int(out.stdout.strip().split(";")[0])
    # (sbatch --wait polls with a multi-second backoff; poll the controller ourselves)
    wait_job_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}, timeout=60)
    return jid


def _final_row(job_id: int) -> dict:
    # slurmctld -> slurmdbd is asynchronous: right after the end, the row can still be partial
    # (JobName "allocation", empty Partition), so wait for the complete record.
    def done():
        return next((r for r in sacct_job(job_id)
                     if r["State"] not in ("PENDING", "RUNNING") and r["Partition"]), None)
    return wait_until(done, timeout=20, what=f"sacct to record job {job_id} as finished")


def test_batch_job_runs_and_is_accounted(slurm_cluster, slurm_jobs, tmp_path):
    jid = _sbatch(slurm_cluster, tmp_path, "hostname; echo done-$SLURM_JOB_ID")
    slurm_jobs.add(jid)
    out = (tmp_path / f"slurm-{jid}.out").read_text().split()
    assert out == [slurm_cluster.node, f"done-{jid}"]
    row = _final_row(jid)
    assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0", row
    assert row["Partition"] == slurm_cluster.partition
    if slurm_cluster.account:
        assert row["Account"] == slurm_cluster.account


@pytest.mark.parametrize("flag", ["--gres=gpu:1", "--gpus=1"])
def test_fake_gpu_is_schedulable(slurm_cluster, slurm_jobs, tmp_path, flag):
    if slurm_cluster.gpus < 1:
        pytest.fail(f"the CI cluster must expose a fake GPU (sinfo GRES: {slurm_cluster.gpus} gpus)")
    jid = _sbatch(slurm_cluster, tmp_path, 'echo "cvd=$CUDA_VISIBLE_DEVICES"', flag)
    slurm_jobs.add(jid)
    assert (tmp_path / f"slurm-{jid}.out").read_text().strip() == "cvd=0"
    row = _final_row(jid)
    assert row["State"] == "COMPLETED", row
    assert "gres/gpu=1" in row["AllocTRES"], row


def test_failing_job_is_reported_failed(slurm_cluster, slurm_jobs, tmp_path):
    jid = _sbatch(slurm_cluster, tmp_path, "echo about-to-fail; exit 3")
    slurm_jobs.add(jid)
    row = _final_row(jid)
    assert row["State"] == "FAILED" and row["ExitCode"] == "3:0", row
