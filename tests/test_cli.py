"""The ``sf_mamba`` command line dispatcher."""

import subprocess
import sys

from sf_mamba.cli import SUBCOMMANDS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sf_mamba", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("train", "eval", "bench", "flops", "probe", "lut", "launch", "report", "seg-train"):
        assert name in result.stdout


def test_unknown_command_fails_and_names_it():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


def test_every_subcommand_module_has_the_cli_contract():
    import importlib

    for name, (module_name, _) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "add_arguments", None)), name
        assert callable(getattr(module, "main", None)), name


def test_models_lists_published_counts(capsys):
    assert main(["models", "--scan", "uni"]) == 0
    out = capsys.readouterr().out
    assert "sf_mamba_b" in out and "97.69" in out and "97.7" in out
