"""Auto-resume: a run SIGKILLed mid-epoch and restarted ends with exactly the metrics and weights of an
uninterrupted run; checkpoints are weights_only-loadable; NaN stops the run and keeps the last good
checkpoint; a complete run is not touched again.

Tolerance: top-1/top-5 must be identical, and val loss and every final weight must agree to 1e-6
(absolute) — in practice the CPU runs are bitwise equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.timeout(600)

# Exercise every source of randomness: RandAugment, random erasing, mixup/cutmix (numpy RNG),
# drop path (torch RNG), EMA; 2 epochs x 6 steps, checkpoint every 4 steps.
OVERRIDES = [
    "sched.epochs=2", "sched.warmup_epochs=1", "train.max_steps_per_epoch=6", "train.batch_size=32",
    "train.ckpt_every_steps=4", "train.eval_batch_size=360",
    "aug.auto_augment=rand-m9-mstd0.5-inc1", "aug.reprob=0.25", "aug.mixup=0.8", "aug.cutmix=1.0",
    "model.drop_path_rate=0.1", "ema.decay=0.9",
]


# Faults are injected by monkeypatching the loop's step functions, never by hooks inside the loop.
# A SIGKILL has to hit a separate process: this script patches `train_step` there, then runs the CLI.
KILL_AFTER_STEP = """
import os, signal, sys
from sf_mamba.train import loop
kill_after, real_step = int(sys.argv[1]), loop.train_step
def step_then_kill(parts, state, *args, **kwargs):
    loss = real_step(parts, state, *args, **kwargs)
    if state.global_step == kill_after:  # before the loop could checkpoint this step
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return loss
loop.train_step = step_then_kill
from sf_mamba.cli import main
sys.exit(main(sys.argv[2:]))
"""


def train_args(run_dir: Path, data: Path, *extra: str) -> list[str]:
    args = ["train", "--config", "smoke", "--run-dir", str(run_dir), "--data-dir", str(data)]
    for item in OVERRIDES + list(extra):
        args += ["--set", item]
    return args


def train(run_dir: Path, data: Path, *extra: str, kill_after_step: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sf_mamba"] if kill_after_step is None else \
        [sys.executable, "-c", KILL_AFTER_STEP, str(kill_after_step)]
    return subprocess.run(cmd + train_args(run_dir, data, *extra), capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=480)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, digits) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    res = train(run, digits)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run


def test_kill_and_resume_matches_uninterrupted(tmp_path, digits, reference_run):
    run = tmp_path / "run"
    # Kill after global step 9 = epoch 2, step 3. The last checkpoint is from step 8 (epoch 2, step 2),
    # so step 9 is lost and must be replayed identically.
    res = train(run, digits, kill_after_step=9)
    assert res.returncode == -9, f"expected SIGKILL, got {res.returncode}\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
    assert not (run / "metrics.json").exists()
    ck = load_ckpt(run / "checkpoints" / "last.pth")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 2, 8)

    res = train(run, digits)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout and "epoch 1 step 2" in res.stdout

    ref = json.loads((reference_run / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert got["top1"] == ref["top1"] and got["top5"] == ref["top5"]
    assert got["ema_top1"] == ref["ema_top1"]
    assert abs(got["loss"] - ref["loss"]) <= 1e-6
    assert got["global_steps"] == ref["global_steps"] == 12

    ck_ref, ck_got = load_ckpt(reference_run / "checkpoints" / "last.pth"), load_ckpt(run / "checkpoints" / "last.pth")
    for key, val in ck_ref["model"].items():
        assert torch.allclose(val.float(), ck_got["model"][key].float(), atol=1e-6, rtol=0), key
    for key, val in ck_ref["ema"].items():
        assert torch.allclose(val.float(), ck_got["ema"][key].float(), atol=1e-6, rtol=0), key
    assert ck_ref["optimizer"]["param_groups"][0]["lr"] == ck_got["optimizer"]["param_groups"][0]["lr"]
    # identical per-epoch log (except wall time)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]
    assert strip(ck_ref["history"]) == strip(ck_got["history"])
    meta = json.loads((run / "meta.json").read_text())
    assert meta["attempts"] == 2 and meta["resumed_from"]["global_step"] == 8 and meta["status"] == "complete"


def test_outputs_and_provenance(reference_run):
    run = reference_run
    for name in ("config.yaml", "metrics.json", "meta.json", "log.csv", "checkpoints/last.pth", "train.log"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("top1", "top5", "loss", "params", "config_sha256"):
        assert key in metrics, key
    assert metrics["params"] > 0
    # no benchmarking inside training: MACs and throughput come from `sf_mamba flops` / `bench`
    assert not {"macs", "scan_flops", "throughput"} & set(metrics)
    from sf_mamba.report.gather import gather_entry     # the run is what the `train` result schema says

    (row,) = gather_entry({"kind": "train", "rq": "rq1_scan", "path": str(run / "metrics.json")})
    assert row["status"] == "ok" and row["params_m"] == metrics["params"] / 1e6 and row["device"]
    meta = json.loads((run / "meta.json").read_text())
    assert len(meta["git"]["sha"] or "") == 40 and isinstance(meta["git"]["dirty"], bool)
    assert meta["config_sha256"] == metrics["config_sha256"]
    assert meta["versions"]["torch"] and meta["versions"]["timm"] and meta["device"]["device_name"]
    assert "job_id" in meta["slurm"] and "restart_count" in meta["slurm"]
    assert meta["seed"] == 0
    lines = (run / "log.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 3
    # no temp files left behind
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


def test_checkpoint_is_weights_only_safe(reference_run):
    ck = load_ckpt(reference_run / "checkpoints" / "last.pth")  # raises if anything is not plain data
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "rng", "epoch", "global_step"} <= set(ck)
    assert isinstance(ck["rng"][0]["torch"], torch.Tensor)


def test_complete_run_is_a_noop(reference_run, digits):
    before = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*") if p.is_file()}
    res = train(reference_run, digits)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "complete" in res.stdout
    after = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*") if p.is_file()}
    assert before == after


def test_config_mismatch_is_refused(reference_run, digits):
    before = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*") if p.is_file()}
    res = train(reference_run, digits, "optim.lr=1e-4")
    assert res.returncode == 2
    assert "holds another config" in res.stderr and "optim.lr" in res.stderr
    after = {p: p.stat().st_mtime_ns for p in reference_run.rglob("*") if p.is_file()}
    assert before == after


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, digits, monkeypatch, capsys):
    from sf_mamba.cli import main as cli
    from sf_mamba.train import loop

    real_loss, calls = loop.compute_loss, []

    def nan_at_step_6(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(loop, "compute_loss", nan_at_step_6)
    run = tmp_path / "run"
    assert cli(train_args(run, digits, "sched.epochs=1")) == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "global step 6" in err and "last good checkpoint" in err, err
    assert not (run / "metrics.json").exists()
    ck = load_ckpt(run / "checkpoints" / "last.pth")
    assert ck["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert json.loads((run / "meta.json").read_text())["status"].startswith("failed")
