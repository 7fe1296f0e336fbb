"""Helpers of the workflow tests: a scratch copy of the workflow, running Snakemake in it, and
reading its job counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def workflow_copy(tmp_path: Path) -> Path:
    """The workflow alone (Snakefile, rules, configs, profiles) in a scratch directory."""
    dst = tmp_path / "wf"
    dst.mkdir()
    shutil.copy(ROOT / "Snakefile", dst)
    for name in ("workflow", "configs", "profiles"):
        shutil.copytree(ROOT / name, dst / name)
    return dst


def smk(cwd: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``snakemake ARGS`` in ``cwd`` (``env`` adds to this process's environment)."""
    return subprocess.run([str(SNAKEMAKE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table."""
    counts = {}
    block = output.split("Job stats:", 1)[-1]
    for line in block.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts
