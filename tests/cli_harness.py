"""The bad-input contract of the `sf_mamba` command line, as one reusable check.

Every subcommand, given a bad value (unknown model or kwarg, wrong file type, missing or corrupt
checkpoint, unwritable output), must end with exit status 2, ONE error line on stderr that names the
problem (after argparse's usage block, for argparse's own errors), no traceback, and no partial
output file. `assert_bad_input` runs the real entry point (`sf_mamba.cli.main`) in-process: an
exception that escapes it would be a traceback for the user and fails the test by itself.

Use: `from cli_harness import BadInput, assert_bad_input` in a test module, one parametrized table per
subcommand (tests/test_cli_bad_input.py has them all except `train`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pytest

from sf_mamba.cli import main


@dataclass
class BadInput:
    """One row of a subcommand's table: ``argv(tmp_path)`` -> arguments after the subcommand name;
    ``names``: strings the error line must contain; ``outputs(tmp_path)``: paths that must not exist."""

    label: str
    argv: Callable[[Path], Sequence[str]]
    names: Sequence[str]
    outputs: Callable[[Path], Sequence[Path]] = field(default=lambda tmp: ())

    def param(self):
        return pytest.param(self, id=self.label)


def error_lines(stderr: str) -> list[str]:
    """stderr without argparse's usage block (``usage: ...`` and its indented continuation lines)."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


def assert_bad_input(capsys, command: str, case: BadInput, tmp_path: Path) -> str:
    """Run ``sf_mamba <command> <case.argv>``; assert the contract; return the error line."""
    capsys.readouterr()
    try:
        status = main([command, *map(str, case.argv(tmp_path))])
    except SystemExit as exit_:  # argparse
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, f"exit status {status}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"sf_mamba {command}") or line.startswith(f"sf_mamba {command.split()[0]}"), line
    for name in case.names:
        assert name in line, f"{name!r} not in {line!r}"
    for path in case.outputs(tmp_path):
        assert not Path(path).exists(), f"partial output left behind: {path}"
        leftovers = list(Path(path).parent.glob(f".{Path(path).name}.tmp-*")) if Path(path).parent.is_dir() else []
        assert not leftovers, leftovers
    return line
