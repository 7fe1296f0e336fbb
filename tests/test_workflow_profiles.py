"""Profiles: the shipped files are valid Snakemake 9 profiles; the installer makes
`snakemake --profile slurm` resolve, with site values from a separate user file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_support import SNAKEMAKE, workflow_copy

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "profiles" / "install.py"


def install(tmp_path, site_text=None, name="slurm"):
    site = tmp_path / "cfg" / "sf_mamba" / "site.yaml"
    if site_text is not None:
        site.parent.mkdir(parents=True, exist_ok=True)
        site.write_text(site_text)
    return subprocess.run([sys.executable, str(INSTALL), name, "--dest", str(tmp_path / "cfg" / "snakemake"),
                           "--site", str(site)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["local", "slurm"])
def test_shipped_profiles_are_snakemake9_yaml(name):
    profile = yaml.safe_load((ROOT / "profiles" / name / "profile.yaml").read_text())
    assert isinstance(profile, dict)
    assert "cluster" not in profile and "cluster-config" not in profile        # v7 keys are gone in v8+
    if name == "slurm":
        assert profile["executor"] == "slurm"
        assert all("gpu" in res for rule, res in profile["set-resources"].items() if rule.endswith("bench"))
        assert not any("slurm_account" in str(v) for v in profile.values())    # site data is not shipped


def test_install_creates_template_then_merges_site_values(tmp_path):
    first = install(tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "cfg/sf_mamba/site.yaml").exists()
    shipped = (ROOT / "profiles/slurm/profile.yaml").read_text()
    proc = install(tmp_path, "slurm_account: proj1\nslurm_partition: gpu\ngpu_model: a100\n")
    assert proc.returncode == 0, proc.stderr
    installed = tmp_path / "cfg/snakemake/slurm/profile.yaml"
    text = installed.read_text()
    assert text.startswith("# GENERATED")
    data = yaml.safe_load(text)
    assert "slurm_account='proj1'" in data["default-resources"]
    assert any("proj1" in c and "cluster=" in c for c in data["config"])
    assert data["set-resources"]["bench"]["gpu_model"] == "a100"
    assert (ROOT / "profiles/slurm/profile.yaml").read_text() == shipped       # never edited


def test_unknown_site_key_is_refused(tmp_path):
    proc = install(tmp_path, "slurm_acount: typo\n")
    assert proc.returncode != 0 and "slurm_acount" in proc.stderr


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed")
def test_bare_profile_name_resolves_after_install(tmp_path):
    assert install(tmp_path, "slurm_account: proj1\n").returncode == 0
    wf = workflow_copy(tmp_path)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(SNAKEMAKE), "rq2_fold", "--profile", "slurm", "-n", "--quiet", "rules"],
                          cwd=wf, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Using profile slurm" in out
