"""tools/install_mmcv.py: the wheel-or-build decision and the C++ flag patch, without building anything."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("install_mmcv", REPO / "tools" / "install_mmcv.py")
install_mmcv = importlib.util.module_from_spec(SPEC)
sys.modules["install_mmcv"] = install_mmcv  # dataclasses resolve annotations through sys.modules
SPEC.loader.exec_module(install_mmcv)

TAGS = ("cp311", "linux_x86_64")
WHEEL = "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_compiled_mmcv_present_means_nothing_to_do(tmp_path):
    plan = install_mmcv.decide("auto", True, "2.1.0", [tmp_path], "2.14.1", TAGS)
    assert plan.action == "present"


def test_prebuilt_wheel_is_preferred_to_a_build(tmp_path):
    (tmp_path / WHEEL).write_bytes(b"")
    for installed in (None, "2.1.0"):  # no mmcv, or mmcv-lite (no ext)
        plan = install_mmcv.decide("auto", False, installed, [tmp_path / "missing", tmp_path], "2.14.1", TAGS)
        assert plan.action == "wheel" and plan.wheel == tmp_path / WHEEL


def test_no_wheel_means_build_from_sdist(tmp_path):
    (tmp_path / "mmcv-2.1.0-cp312-cp312-linux_x86_64.whl").write_bytes(b"")  # other Python: not ours
    (tmp_path / "mmcv-2.2.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"")  # other version
    plan = install_mmcv.decide("auto", False, None, [tmp_path], "2.14.1", TAGS)
    assert plan.action == "build" and "no prebuilt mmcv 2.1.0 wheel for cp311/linux_x86_64" in plan.reason


def test_a_previous_build_for_this_torch_is_reused(tmp_path):
    cache = install_mmcv.cache_dir("2.14.1")
    assert cache == tmp_path / "cache" / "sf-mamba" / "mmcv-2.1.0-torch-2.14.1"
    cache.mkdir(parents=True)
    (cache / WHEEL).write_bytes(b"")
    assert install_mmcv.decide("auto", False, None, [], "2.14.1", TAGS).wheel == cache / WHEEL
    # a wheel built against another torch would not load: never reused
    assert install_mmcv.decide("auto", False, None, [], "2.13.0", TAGS).action == "build"


def test_lite_is_an_explicit_opt_in_only(tmp_path):
    (tmp_path / WHEEL).write_bytes(b"")
    assert install_mmcv.decide("lite", True, "2.1.0", [tmp_path], "2.14.1", TAGS).action == "lite"
    with pytest.raises(ValueError, match="unknown mode 'full'"):
        install_mmcv.decide("full", False, None, [], "2.14.1", TAGS)


def test_cxx_standard_patch(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text("args = ['-std=c++14']\nextra = '-std=c++17'\nkeep = '-std=c++20'\n")
    assert install_mmcv.patch_cxx_standard(setup) == 2
    assert setup.read_text() == "args = ['-std=c++20']\nextra = '-std=c++20'\nkeep = '-std=c++20'\n"


def test_wheel_tags_match_this_interpreter():
    py, plat = install_mmcv.wheel_tags()
    assert py == f"cp{sys.version_info.major}{sys.version_info.minor}" and "-" not in plat and "." not in plat


def test_makefile_calls_the_script_and_lite_is_opt_in(tmp_path):
    text = (REPO / "Makefile").read_text()
    assert "tools/install_mmcv.py" in text and "MMCV ?=" in text
    # the venv keeps its mode: a lite stamp (newer than every prerequisite) makes a plain `make venv`
    # a no-op, and asking for full reinstalls
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".sf-mamba-installed-mmcv-lite").touch()
    kept = subprocess.run(["make", "-n", "venv", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True)
    assert "install_mmcv.py" not in kept.stdout, kept.stdout + kept.stderr
    switched = subprocess.run(["make", "-n", "venv", "MMCV=full", f"VENV={venv}"], cwd=REPO, capture_output=True,
                              text=True)
    assert "--mode auto" in switched.stdout, switched.stdout + switched.stderr
    dry = subprocess.run(["make", "-n", "-B", "venv", "MMCV=lite", "VENV=/nonexistent-venv"], cwd=REPO,
                         capture_output=True, text=True)
    assert "--mode lite" in dry.stdout, dry.stdout + dry.stderr
    dry = subprocess.run(["make", "-n", "-B", "venv", "VENV=/nonexistent-venv"], cwd=REPO,
                         capture_output=True, text=True)
    assert "--mode auto" in dry.stdout and "--wheel-dir" in dry.stdout, dry.stdout + dry.stderr
