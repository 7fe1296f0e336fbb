"""submitit on the real CI cluster, independent of the trainer: an explicitly named SlurmExecutor,
the fake GPU, and the timeout -> checkpoint -> ``scontrol requeue`` (same job id) -> resume path.

The callable is ``slurm_support.StepTask``: a deterministic step loop with an atomically written
checkpoint and ``metrics.json`` written last.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

# fixtures (slurm_cluster, slurm_jobs, digits_data) come from the slurm_support plugin (tests/conftest.py)
from slurm_support import StepTask, job_environment, sacct_job, slurm_executor, wait_until

submitit = pytest.importorskip("submitit")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(150)]


def test_submitit_slurm_executor_gets_the_fake_gpu(slurm_cluster, slurm_jobs, tmp_path):
    ex = slurm_executor(tmp_path / "submitit" / "%j", slurm_cluster, gpus_per_node=1)
    job = ex.submit(job_environment)
    slurm_jobs.add(int(job.job_id))
    env = job.result()
    assert env["SLURM_JOB_ID"] == job.job_id
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["SLURM_JOB_PARTITION"] == slurm_cluster.partition
    # submitit's own state cache may lag (it read the result pickle first): ask Slurm.
    wait_until(lambda: [r["State"] for r in sacct_job(job.job_id, "State")] == ["COMPLETED"], timeout=20,
               what="sacct COMPLETED")
    assert "gres/gpu=1" in sacct_job(job.job_id, "AllocTRES")[0]["AllocTRES"]


def test_timeout_signal_requeues_same_job_and_resumes_from_checkpoint(slurm_cluster, slurm_jobs, tmp_path):
    steps = 8
    # The metrics an uninterrupted run gives (in-process, no sleeps).
    expected = StepTask(tmp_path / "reference", steps=steps, step_s=0)()

    run_dir = tmp_path / "run"
    ex = slurm_executor(tmp_path / "submitit" / "%j", slurm_cluster, max_num_timeout=2)
    job = ex.submit(StepTask(run_dir, steps=steps, step_s=1.0))
    slurm_jobs.add(int(job.job_id))

    ckpt = run_dir / "ckpt.json"
    wait_until(lambda: ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 2, timeout=60,
               what="the job to run and checkpoint 2 steps")
    # What a real walltime expiry does: Slurm sends the --signal (USR2) before the limit.
    job._interrupt(timeout=True)
    t0 = time.monotonic()
    result = job.result()  # blocks through the requeue
    requeue_to_done = time.monotonic() - t0

    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2, attempts
    assert {a["job_id"] for a in attempts} == {job.job_id}, "requeued under a different job id"
    assert [a["restart_count"] for a in attempts] == [0, 1]
    assert attempts[0]["start_step"] == 0
    assert 2 <= attempts[1]["start_step"] < steps, "the second attempt did not resume from the checkpoint"

    assert result == expected
    assert json.loads((run_dir / "metrics.json").read_text()) == expected

    log = Path(job.paths.stdout).read_text() + Path(job.paths.stderr).read_text()
    assert "timed-out" in log and f"Requeued job {job.job_id}" in log, log[-2000:]
    # Slurm's own record: one REQUEUED allocation, then the COMPLETED one, same id.
    # (the result pickle can be read before slurmdbd has the final record: wait for it)
    states = wait_until(lambda: (s := [r["State"] for r in sacct_job(job.job_id, "JobIDRaw,State", duplicates=True)])
                        and s[-1] == "COMPLETED" and s, timeout=30, what="sacct to record the completion")
    assert "REQUEUED" in states, states
    print(f"requeue -> completion took {requeue_to_done:.1f} s")
