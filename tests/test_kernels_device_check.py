"""kernels/device_check.py --cpu: the GPU script's correctness path on tiny shapes, under the interpreter.

It must run from the source tree with PYTHONPATH=.:kernels (as on the lent GPU machine), check what
the GPU run checks, print the static estimates, and measure nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.triton
REPO = Path(__file__).resolve().parents[1]


def test_device_check_cpu_mode(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'kernels'}"}
    result = subprocess.run([sys.executable, str(REPO / "kernels" / "device_check.py"), "--cpu",
                             "--out-dir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = tmp_path.glob("*.json")
    report = json.loads(path.read_text())
    assert report["mode"] == "cpu-interpreter" and report["all_correct"]
    checks = [row["check"] for row in report["correctness"]]
    for expected in ("triton vs reference: fp32 fixed B, variable C", "backward vs reference",
                     "fold invariance", "strided (channel-last) inputs", "non-finite image",
                     "backend 'auto'", "model sf_mamba_micro forward"):
        assert any(expected in check for check in checks), expected
    # nothing is timed off a GPU; the static estimates are listed (None where there is no figure)
    assert report["timings"] == report["fwdbwd_timings"] == report["fold_sweep"] == []
    assert {(row["L"], row["channels"]) for row in report["static"]} == {(198, 160), (51, 320)}
    assert "static L=198 D=160" in result.stdout
    # the non-default paths are checked too (the dB/dC shuffle tree with the prefetching forward)
    assert any("shuffle tree + prefetch" in check for check in checks)


def test_compile_check_compiles_what_the_device_check_launches(tmp_path):
    """kernels/compile_check.py (run before a GPU run, with the GPU's triton first on the path):
    here on the pinned triton, first case only; the default and the flipped paths, sm_90, no GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'kernels'}"
    env["SF_MAMBA_AOT_CACHE"] = str(tmp_path / "aot")
    result = subprocess.run([sys.executable, str(REPO / "kernels" / "compile_check.py"), "--limit", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "sm_90" in summary and "from 1 cases, 0 failed" in summary, summary
    assert int(summary.split(": ")[1].split()[0]) >= 4  # fwd x2 (prefetch off/on), bwd x2, last-state fwd
