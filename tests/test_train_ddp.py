"""DDP on CPU (gloo) with two processes, set up from torchrun's environment and from a submitit/Slurm
job environment: both complete, record world size 2, and (same seed, same sharding) agree exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SETS = ["sched.epochs=1", "train.max_steps_per_epoch=3", "train.ckpt_every_steps=2",
        "train.batch_size=32"]


def _train_args(run: Path, data: Path) -> list[str]:
    args = ["train", "--config", "smoke", "--run-dir", str(run), "--data-dir", str(data)]
    for s in SETS:
        args += ["--set", s]
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                       "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _check(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    assert metrics["world_size"] == 2 and meta["world_size"] == 2 and meta["dist_backend"] == "gloo"
    assert metrics["global_steps"] == 3
    return metrics | {"source": meta["dist_source"]}


def test_ddp_torchrun_and_submitit_env_agree(tmp_path, digits):
    torchrun = Path(sys.executable).with_name("torchrun")
    run_a = tmp_path / "torchrun"
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "sf_mamba",
                          *_train_args(run_a, digits)], capture_output=True, text=True, env=_clean_env(),
                         timeout=500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a = _check(run_a)
    assert a["source"] == "torchrun"

    run_b = tmp_path / "submitit"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = _clean_env() | {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank),
                              "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2", "SLURM_NODEID": "0",
                              "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
                              "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "sf_mamba", *_train_args(run_b, digits)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outs = [p.communicate(timeout=500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    b = _check(run_b)
    assert b["source"] == "submitit"
    meta_b = json.loads((run_b / "meta.json").read_text())
    assert meta_b["slurm"]["job_id"] == "4242" and meta_b["slurm"]["restart_count"] == 0
    for key in ("top1", "top5", "loss", "ema_top1"):
        assert a[key] == b[key], key
