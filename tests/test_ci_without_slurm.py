"""ci/without_slurm.sh: the main suite runs as on a machine where Slurm was never installed."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("srun", "sinfo", "sbatch", "scontrol", "squeue", "sacct")


@pytest.mark.skipif(os.environ.get("SF_MAMBA_NO_SLURM") != "1", reason="runs inside ci/without_slurm.sh (.ci/run)")
def test_this_suite_sees_no_slurm():
    assert {tool: shutil.which(tool) for tool in TOOLS} == dict.fromkeys(TOOLS)
    assert not [k for k in os.environ if k.startswith("SLURM_")]


def test_script_hides_slurm_tools_but_keeps_their_neighbours(tmp_path):
    """A PATH directory holding Slurm next to other programs (like /usr/bin) is mirrored without Slurm."""
    mixed = tmp_path / "bin"
    mixed.mkdir()
    for name in (*TOOLS, "hello"):
        (mixed / name).write_text(f"#!/bin/sh\necho {name}\n")
        (mixed / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{mixed}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "7"}
    probe = "command -v srun || echo no-srun; command -v sinfo || echo no-sinfo; hello; echo job=${SLURM_JOB_ID-none}"
    result = subprocess.run(["bash", str(ROOT / "ci/without_slurm.sh"), "sh", "-c", probe], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["no-srun", "no-sinfo", "hello", "job=none"]
    assert f"PATH entry {mixed} replaced" in result.stderr


def test_script_passes_the_command_status_through():
    result = subprocess.run(["bash", str(ROOT / "ci/without_slurm.sh"), "sh", "-c", "exit 3"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
