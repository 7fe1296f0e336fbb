"""Compile gate for the Triton selective scan (no GPU needed): every launch config the host code
picks for MambaVision-T stage 3/4 compiles for sm_80 and sm_90 with triton's bundled ptxas, and the
compiled code meets the kernel budgets of docs/kernels.md ("Triton kernel design").

The compile runs in a subprocess (``python -m sf_mamba_kernels.selective_scan.aot``, two compile
processes) so this module is unaffected by the interpreter that tests/test_kernels_scan.py turns on.
Compiled figures are cached by key (source, specialisation, options, arch, triton version) under
``$SF_MAMBA_AOT_CACHE`` (default ``~/.cache/sf_mamba/aot``): a warm run takes seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed: the AOT compile gate needs it")

REPO = Path(__file__).resolve().parents[1]
N_CONFIGS = 2 * 3 * 8 * 3  # stages x dtypes x folds 1..8 x (fwd, fwd_save, bwd), per arch
FWD_BUDGET, BWD_BUDGET, MIN_FWD_WARPS = 12.0, 36.0, 12


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "kernels"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "sf_mamba_kernels.selective_scan.aot", "--out-dir", str(out),
                             "--jobs", "2", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {arch: json.loads((out / f"aot_sm{arch}.json").read_text()) for arch in (90, 80)}


def _label(row):
    return f"{row['arch']} {row['kernel']} {row['dtype']} stage {row['stage']} fold {row['fold']}"


def test_every_config_compiles_for_both_targets(rows):
    for arch, table in rows.items():
        assert len(table) == N_CONFIGS
        assert {r["arch"] for r in table} == {f"sm_{arch}"}
        assert {(r["stage"], r["fold"], r["kernel"], r["dtype"]) for r in table} == {
            (s, f, k, d) for s in (3, 4) for f in range(1, 9) for k in ("fwd", "fwd_save", "bwd")
            for d in ("bfloat16", "float16", "float32")}


def test_no_spills_and_no_gpu_scope_fences(rows):
    for table in rows.values():
        for row in table:
            assert row["spill_bytes"] == 0 and row["local_memory_ops"] == 0, _label(row)
            assert row["membar_gpu"] == 0, _label(row)


def test_forward_budget_and_occupancy(rows):
    for table in rows.values():
        for row in table:
            if row["kernel"] == "fwd":
                assert row["sass_per_element"] <= FWD_BUDGET, (_label(row), row["sass_per_element"])
                assert row["warps_per_sm"] >= MIN_FWD_WARPS, (_label(row), row["regs"])


def test_training_forward_budget(rows):
    """The forward that saves checkpoints for the backward (no register cap: it would spill)."""
    for row in rows[90]:
        if row["kernel"] == "fwd_save":
            assert row["sass_per_element"] <= FWD_BUDGET, (_label(row), row["sass_per_element"])


def test_backward_budget(rows):
    """<= 36 on sm_90 since the dB/dC sums became a lane reduce-scatter (43-47 with a shuffle tree per value)."""
    for row in rows[90]:
        if row["kernel"] == "bwd":
            assert row["sass_per_element"] <= BWD_BUDGET, (_label(row), row["sass_per_element"])
