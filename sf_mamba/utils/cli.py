"""The boundary every ``sf_mamba`` subcommand shares: bad input in, JSON results out.

- Bad input (a missing file, an unknown model, a constructor kwarg the model rejects, an output path
  that cannot be written) is reported with :func:`fail`, which raises :class:`CliError`; the entry
  point (:func:`sf_mamba.cli.main`) turns it into ONE line on stderr,
  ``sf_mamba <command>: error: <message>``, and exit status 2. No traceback: a traceback means a bug.
- Results are written with :func:`write_json_result` (atomic: a reader never sees half a file, and a
  failed run leaves no file behind).

Import-light on purpose (no torch, no timm at import time): ``sf_mamba launch`` uses it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["CliError", "fail", "one_line", "shorten", "parse_json_object", "check_output_path",
           "write_json_result", "print_json", "create_model", "load_checkpoint"]


class CliError(Exception):
    """Bad input from the user: the entry point prints the message as one line and exits 2."""


def fail(message: str) -> NoReturn:
    """Stop the subcommand: ``message`` names the argument and the problem."""
    raise CliError(message)


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def shorten(text: Any, limit: int = 400) -> str:
    """:func:`one_line`, cut to ``limit`` characters (a state_dict mismatch lists every key)."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json_object(text: str, option: str = "--model-kwargs") -> dict:
    """Parse ``text`` as a JSON object (a dict), or fail naming ``option``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        fail(f"{option} is not JSON: {err}")
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object like '{{\"scan\": \"uni\"}}', got {text!r}")
    return value


def check_output_path(path: str | os.PathLike, option: str = "--out", directory: bool = False) -> Path:
    """Create ``path``'s parent directory and check it is writable, before any long computation.
    ``path`` names a file, or with ``directory=True`` a directory (which may exist)."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        fail(f"{option} {str(path)!r} is {'not ' if directory else ''}a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option} {str(path)!r} cannot be written: {err.strerror or err}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        fail(f"{option} {str(path)!r} cannot be written: permission denied on {str(path.parent)!r}")
    return path


def write_json_result(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (sorted keys); an OSError is bad input."""
    from sf_mamba.utils.io import atomic_write_json

    try:
        return atomic_write_json(path, payload)
    except OSError as err:
        fail(f"cannot write {str(path)!r}: {err.strerror or err}")


def print_json(payload: Any) -> None:
    """The result on stdout, for a human or a pipe (the file, if any, is the record)."""
    print(json.dumps(payload, indent=2, default=str), flush=True)


def create_model(name: str, kwargs: dict | None = None, option: str = "--model-kwargs"):
    """``timm.create_model(name, **kwargs)`` for a command line: an unknown model, an unknown kwarg
    or a value the model rejects is bad input that names ``option``."""
    import timm

    import sf_mamba.models  # noqa: F401  (registers the sf_mamba_* models)

    if not timm.is_model(name):
        fail(f"unknown model {name!r}; sf_mamba models: {', '.join(timm.list_models('sf_mamba*'))}")
    kwargs = dict(kwargs or {})
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        fail(f"{name} rejects {option} {json.dumps(kwargs, default=str)}: {one_line(err)}")


def load_checkpoint(path: str | os.PathLike, option: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing file, a directory or a file that is
    not a PyTorch checkpoint is bad input that names ``option``."""
    import torch

    path = Path(path)
    if not path.exists():
        fail(f"{option} {str(path)!r} not found")
    if not path.is_file():
        fail(f"{option} {str(path)!r} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch raise a dozen types for a bad file
        fail(f"{option} {str(path)!r} is not a readable PyTorch checkpoint ({type(err).__name__}: "
             f"{shorten(str(err).splitlines()[0] if str(err) else '', 160)})")
