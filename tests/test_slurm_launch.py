"""``sf_mamba launch --cluster slurm`` with the real trainer on the real CI cluster.

* a training job is sent the timeout signal (what Slurm sends ``signal_delay_s`` before the limit),
  is requeued under the same job id, resumes from its checkpoint and ends with exactly the metrics
  of an uninterrupted run;
* the launcher (the driver) is SIGKILLed while the job runs; a second ``sf_mamba launch`` reattaches
  to that job instead of submitting a duplicate, and completes;
* a failing job makes the launcher exit non-zero and print the job's log paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

# fixtures (slurm_cluster, slurm_jobs, digits_data) come from the slurm_support plugin (tests/conftest.py)
from slurm_support import (REPO, job_ids_since, job_state, max_job_id,
                           sacct_job, sf_mamba_cmd, subprocess_env, wait_until)

submitit = pytest.importorskip("submitit")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

RECIPE = REPO / "sf_mamba" / "configs" / "train" / "smoke.yaml"
# A few optimizer steps with a checkpoint after every one, so an interruption lands mid-run.
TINY = ["sched.epochs=2", "sched.warmup_epochs=0", "train.max_steps_per_epoch=5", "train.batch_size=16",
        "train.ckpt_every_steps=1", "train.log_every_steps=1",
        "train.eval_batch_size=360", "data.num_workers=0"]
# metrics.json keys that must match an uninterrupted run exactly (wall time obviously does not)
DETERMINISTIC = ("top1", "top5", "loss", "train_loss", "ema_top1", "ema_top5", "ema_loss", "global_steps",
                 "epochs", "best_epoch", "best_top1", "config_sha256", "params", "macs")


_sf_mamba = sf_mamba_cmd


def _train_args(run_dir: str, digits: Path) -> list[str]:
    return ["train", "--config", str(RECIPE), "--run-dir", run_dir, "--data-dir", str(digits),
            *[f"--set={s}" for s in TINY]]


def _launch_cmd(cluster, run_dir: Path, digits: Path, job_name: str, *extra: str) -> list[str]:
    cmd = _sf_mamba("launch", "--cluster", "slurm", "--run-dir", str(run_dir), "--partition", cluster.partition,
                    "--timeout-min", "10", "--signal-delay-s", "30", "--max-num-timeout", "3", "--cpus", "1",
                    "--mem-gb", "3", "--poll-s", "1", "--job-name", job_name, *extra)
    if cluster.account:
        cmd += ["--account", cluster.account]
    return [*cmd, "--", *_train_args("{work_dir}", digits)]


def _reference_run(tmp_path: Path, digits: Path) -> subprocess.Popen:
    """The uninterrupted run, as a plain local process (started in parallel with the Slurm job)."""
    return subprocess.Popen(_sf_mamba(*_train_args(str(tmp_path / "reference"), digits)), cwd=REPO,
                            env=subprocess_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_reference(proc: subprocess.Popen, tmp_path: Path) -> dict:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    return json.loads((tmp_path / "reference" / "metrics.json").read_text())


def _record(run_dir: Path) -> dict:
    return wait_until(lambda: (run_dir / "launch.json").exists() and json.loads((run_dir / "launch.json").read_text()),
                      timeout=120, what="launch.json (the submission record)")


def _checkpoint(run_dir: Path) -> Path:
    rec = _record(run_dir)
    return Path(rec["work_dir"]) / "checkpoints" / "last.pth"


def _assert_same_metrics(got: dict, want: dict) -> None:
    for key in DETERMINISTIC:
        if key in want:
            assert got.get(key) == want[key], f"metrics.json[{key!r}]: {got.get(key)!r} != uninterrupted {want[key]!r}"


def _communicate(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"sf_mamba launch did not finish in {timeout:.0f} s:\n{out[-4000:]}")
    return out


def test_timeout_signal_requeues_training_and_resumes_to_identical_metrics(slurm_cluster, slurm_jobs, digits,
                                                                            tmp_path):
    reference = _reference_run(tmp_path, digits)
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(_launch_cmd(slurm_cluster, run_dir, digits, "sfm_ci_requeue"), cwd=tmp_path,
                                env=subprocess_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        rec = _record(run_dir)
        job_id = rec["job_id"]
        slurm_jobs.add(int(job_id))
        ckpt = _checkpoint(run_dir)
        wait_until(lambda: ckpt.exists() or launcher.poll() is not None, timeout=240,
                   what=f"job {job_id} to write its first checkpoint")
        if launcher.poll() is not None:
            pytest.fail(f"the launcher ended before the first checkpoint:\n{launcher.communicate()[0][-4000:]}")
        # Exactly what Slurm does before the time limit (and what submitit's job._interrupt(timeout=True) does).
        submitit.SlurmJob(folder=run_dir / "submitit", job_id=job_id)._interrupt(timeout=True)
        out = _communicate(launcher, 300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out[-4000:]

    meta = json.loads((Path(rec["work_dir"]) / "meta.json").read_text())
    train_log = (Path(rec["work_dir"]) / "train.log").read_text()
    assert "resuming" in train_log, f"the requeued job did not resume from the checkpoint:\n{train_log[-3000:]}"
    assert json.loads((run_dir / "launch.json").read_text())["submissions"] == 1
    # one Slurm job, requeued once under the same id (sacct -D keeps the REQUEUED record)
    states = wait_until(lambda: (s := [r["State"] for r in sacct_job(job_id, "JobIDRaw,State", duplicates=True)])
                        and s[-1] == "COMPLETED" and s, timeout=30, what="sacct to record the completion")
    assert "REQUEUED" in states, states
    assert meta.get("attempts", 2) >= 2, meta
    submitit_log = "".join(p.read_text() for p in (run_dir / "submitit").glob(f"{job_id}_0_log.*"))
    assert f"Requeued job {job_id}" in submitit_log, submitit_log[-3000:]

    _assert_same_metrics(json.loads((run_dir / "metrics.json").read_text()), _wait_reference(reference, tmp_path))


def test_killed_launcher_is_replaced_by_one_that_reattaches(slurm_cluster, slurm_jobs, digits, tmp_path):
    run_dir = tmp_path / "run"
    before = max_job_id()
    cmd = _launch_cmd(slurm_cluster, run_dir, digits, "sfm_ci_reattach")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        rec = _record(run_dir)
        job_id = rec["job_id"]
        slurm_jobs.add(int(job_id))
        wait_until(lambda: job_state(job_id) == "RUNNING", timeout=60, what=f"job {job_id} to run")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies (ssh drop, login-node reboot)
        first.communicate()
    assert job_state(job_id) in ("RUNNING", "COMPLETING", "COMPLETED"), "killing the driver must not touch the job"

    second = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert (f"reattaching to Slurm job {job_id}" in out) or ("already exists: nothing to run" in out), out[-3000:]
    assert job_ids_since(before, under=tmp_path) == [int(job_id)], "a duplicate job was submitted"
    assert json.loads((run_dir / "launch.json").read_text())["submissions"] == 1
    assert (run_dir / "metrics.json").is_file()


def test_failing_job_fails_the_launcher_with_its_log_paths(slurm_cluster, slurm_jobs, digits, tmp_path):
    run_dir = tmp_path / "run"
    cmd = _launch_cmd(slurm_cluster, run_dir, digits, "sfm_ci_fail")
    cmd[cmd.index("--data-dir") + 1] = str(tmp_path / "no-such-dataset")
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    job_id = json.loads((run_dir / "launch.json").read_text())["job_id"]
    slurm_jobs.add(int(job_id))
    assert f"job {job_id} failed" in out, out[-3000:]
    assert str(run_dir / "submitit" / f"{job_id}_0_log.err") in out, "the job's log path is not reported"
    assert not (run_dir / "metrics.json").exists()
