"""The workflow's schemas hold the model's choices: the sheet schema may not import model code (the
workflow knows the package only through its CLI), so this test holds the two lists equal."""

from pathlib import Path

import yaml

from sf_mamba.models import AUX_DISCARDS, AUX_INITS, SCANS

ROOT = Path(__file__).resolve().parents[1]


def sheet_schema() -> dict:
    return yaml.safe_load((ROOT / "workflow/schemas/experiments.schema.yaml").read_text())


def test_sheet_schema_lists_the_models_scan_designs_and_aux_choices():
    props = sheet_schema()["properties"]
    assert tuple(props["scan"]["enum"]) == SCANS
    assert tuple(props["aux_init"]["enum"]) == AUX_INITS
    assert tuple(props["aux_discard"]["enum"]) == AUX_DISCARDS


def test_sheet_schema_defaults_are_the_models_defaults():
    import inspect

    from sf_mamba.models import SFMamba

    defaults = {k: v.default for k, v in inspect.signature(SFMamba.__init__).parameters.items()}
    props = sheet_schema()["properties"]
    for key in ("scan", "attention", "aux_init", "aux_discard", "match_params"):
        assert props[key]["default"] == defaults[key], key
