# The config, validated against workflow/schemas/config.schema.yaml (which fills in every default),
# and the PATH the rules run `sf_mamba` from. Everything after this file reads a valid `config`.
import json
import os
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _coerce_cli_scalars(value, schema, defs):
    """`--config a={'b': true}` delivers nested scalars as text; type them as the schema says."""
    if "$ref" in schema:
        schema = {**defs.get(schema["$ref"].split("/")[-1], {}), **schema}
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _coerce_cli_scalars(v, props.get(k, {}), defs) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_cli_scalars(v, schema.get("items", {}), defs) for v in value]
    if isinstance(value, str):
        kind = schema.get("type")
        if kind == "boolean" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind in ("integer", "number"):
            try:
                return int(value) if kind == "integer" else float(value)
            except ValueError:
                return value
    return value


with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as _fh:
    _schema = yaml.safe_load(_fh)
config.update(_coerce_cli_scalars(dict(config), _schema, _schema.get("$defs", {})))
validate(config, "../schemas/config.schema.yaml")


def _put_own_bin_first_on_path():
    """Rules call `sf_mamba`; run from an unactivated venv, find it beside this Python."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(bindir, "sf_mamba")) and bindir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bindir, path])


_put_own_bin_first_on_path()
