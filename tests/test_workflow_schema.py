"""The workflow's schemas hold the model's choices: the sheet schemas may not import model code (the
workflow knows the package only through its CLI), so this test holds the lists equal."""

from pathlib import Path

import yaml

from sf_mamba.models import AUX_DISCARDS, AUX_INITS, SCANS

ROOT = Path(__file__).resolve().parents[1]


def sheet_schema() -> dict:
    return yaml.safe_load((ROOT / "workflow/schemas/experiments.schema.yaml").read_text())


def test_sheet_schema_lists_the_models_scan_designs_and_aux_choices():
    props = sheet_schema()["properties"]
    assert tuple(props["scan"]["enum"]) == SCANS
    fc = yaml.safe_load((ROOT / "workflow/schemas/future_context.schema.yaml").read_text())["properties"]
    assert tuple(fc["scan"]["enum"]) == SCANS and tuple(fc["aux_init"]["enum"]) == AUX_INITS
    assert tuple(props["aux_init"]["enum"]) == AUX_INITS
    assert tuple(props["aux_discard"]["enum"]) == AUX_DISCARDS


def test_sheet_schema_defaults_are_the_models_defaults():
    import inspect

    from sf_mamba.models import SFMamba

    from sf_mamba.models.sf_mamba import AUX_TOKENS_DEFAULT

    defaults = {k: v.default for k, v in inspect.signature(SFMamba.__init__).parameters.items()}
    props = sheet_schema()["properties"]
    for key in ("scan", "attention", "aux_discard", "match_params"):
        assert props[key]["default"] == defaults[key], key
    # scan-dependent defaults (None in the signature): the sheet's equal the model's for its default scan
    assert defaults["aux_tokens"] is None and props["aux_tokens"]["default"] == AUX_TOKENS_DEFAULT[defaults["scan"]]
    assert defaults["aux_init"] is None and props["aux_init"]["default"] == "learnable"
