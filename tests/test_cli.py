"""The ``sf_mamba`` command line dispatcher."""

import json
import subprocess
import sys

import pytest

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


# what a --help must never pay for: seconds of import (torch alone is ~2 s on the 2-core CI machine)
HEAVY_MODULES = ("torch", "timm", "triton", "sf_mamba.models", "matplotlib", "pandas",
                 "mmengine", "mmcv", "mmseg", "mmdet")


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_help_imports_no_heavy_module(command):
    """`sf_mamba <command> --help` builds the full parser (every option, default and help line) from
    the subcommand's module without importing torch, timm, matplotlib, pandas or OpenMMLab: they are
    imported by the code that runs, not by the code that parses (the smoke DAG starts ~60 commands)."""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['sf_mamba', {command!r}, '--help']\n"
             "try:\n    runpy.run_module('sf_mamba', run_name='__main__')\n"
             "except SystemExit as exit_:\n    assert exit_.code in (0, None), exit_.code\n"
             f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: sf_mamba " + command in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_import_sf_mamba_is_light_and_registers_models_when_timm_loads():
    """`import sf_mamba` imports no torch; timm imported after it (or before it) lists sf_mamba_*."""
    from sf_mamba.models import VARIANTS

    after = ("import sys, json, sf_mamba\n"
             "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
             "import timm\n"
             "print(type(timm.create_model('sf_mamba_micro', num_classes=3)).__name__)\n"
             "print(json.dumps(timm.list_models('sf_mamba_*')))\n")
    before = after.replace("import sys, json, sf_mamba\n", "import sys, json, timm, sf_mamba\n").replace(
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n", "")
    for code in (after, before):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        created, listed = result.stdout.strip().splitlines()[-2:]
        assert created == "SFMamba"
        assert set(json.loads(listed)) == {f"sf_mamba_{v}" for v in VARIANTS}


def test_every_variant_has_an_explicit_factory():
    """One `@register_model def sf_mamba_<v>` per row of VARIANTS (go-to-definition finds it)."""
    import inspect

    import timm

    from sf_mamba.models import VARIANTS
    from sf_mamba.models import sf_mamba as family

    for variant in VARIANTS:
        name = f"sf_mamba_{variant}"
        factory = getattr(family, name)
        assert inspect.getsource(factory).lstrip().startswith(f"@register_model\ndef {name}(")
        assert timm.models.model_entrypoint(name) is factory
        assert factory.__doc__


def test_subpackages_are_attributes_on_first_use():
    import sf_mamba

    assert sf_mamba.utils.cli.fail is not None
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        sf_mamba.no_such_thing
