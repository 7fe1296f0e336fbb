"""Shared test settings and fixtures: deterministic seeds, a small thread count for the 2-core CI
machine, the offline digits set built once per session, and the Slurm fixtures (``slurm_support``,
loaded as a plugin: test modules import its helpers by name, never through ``sys.path``)."""

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["slurm_support"]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """The real offline digits set (ImageFolder layout, train/ and val/), built once per session."""
    from sf_mamba.data import build_digits

    out = tmp_path_factory.mktemp("data") / "digits"
    build_digits(out)
    return out
