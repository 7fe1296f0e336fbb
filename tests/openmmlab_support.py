"""What the seg-* and det-* command tests share: running a command in a fresh process, and the
train -> auto-resume -> finished-run round trip both tasks must pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_command(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m sf_mamba ARGV` from the repository root; asserts exit 0 and shows the output tail."""
    # one intra-op thread: the micro model's ops are tiny and 2 threads on a busy 2-core box stall
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # the safe path must work without it
    proc = subprocess.run([sys.executable, "-m", "sf_mamba", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    return proc


def resume_round_trip(command: str, config: str, work: Path, data_root: Path, *cfg_options: str,
                      timeout: int = 600) -> dict:
    """4 iterations (checkpoints at 2 and 4), then the same work dir with max_iters=6 (auto-resume),
    then the same again (a finished run of the same config: nothing is redone)."""
    common = [command, "--config", config, "--work-dir", str(work), "--data-root", str(data_root),
              "--cfg-options", "default_hooks.checkpoint.interval=2", "train_cfg.val_interval=1000",
              *cfg_options]
    first = run_command(*common, "train_cfg.max_iters=4", timeout=timeout)
    first_metrics = json.loads((work / "metrics.json").read_text())
    second = run_command(*common, "train_cfg.max_iters=6", timeout=timeout)
    stamp = (work / "metrics.json").stat().st_mtime_ns
    third = run_command(*common, "train_cfg.max_iters=6", timeout=timeout)
    assert (work / "metrics.json").stat().st_mtime_ns == stamp
    return dict(work=work, first=first, second=second, third=third, first_metrics=first_metrics,
                metrics=json.loads((work / "metrics.json").read_text()),
                meta=json.loads((work / "meta.json").read_text()))
