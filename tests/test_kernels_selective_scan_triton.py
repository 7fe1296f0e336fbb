"""The Triton backend on a subset of mamba_ssm's test grid, through the interface, under the Triton
interpreter (CPU): the same fp64 oracle and tolerances as test_kernels_selective_scan.py.

TRITON_INTERPRET must be set before triton decorates the kernels, hence the first lines.
"""

import os

_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import sf_mamba_kernels.selective_scan.triton_scan as triton_scan  # noqa: E402
from test_kernels_selective_scan import (  # noqa: E402
    assert_within_mamba_tolerances, backend_with_grads, grid_inputs, oracle_with_grads)

from sf_mamba_kernels.selective_scan import interpreter_patch  # noqa: E402
from sf_mamba_kernels.selective_scan.testing import make_scan_inputs  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    os.environ["TRITON_INTERPRET"] = "1"
    if type(getattr(triton_scan, "_scan_fwd_kernel", None)).__name__ not in ("InterpretedFunction", "NoneType"):
        importlib.reload(triton_scan)  # decorated earlier without the interpreter: decorate again
    installed = interpreter_patch.install()
    yield installed
    interpreter_patch.uninstall()
    if _INTERPRET_BEFORE is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE


# (variable B, variable C, groups, z, D + bias + softplus + last state, L): mamba_ssm's flags
# (kept to three points: the interpreter runs the kernel step by step in Python, ~15-25 s each here)
SUBSET = [
    (True, True, 1, True, True, 128),
    (False, True, 1, True, True, 128),   # fixed B with input-dependent C
    (True, False, 2, False, False, 128),  # input-dependent B (2 groups) with fixed C, bare
]


@pytest.mark.parametrize("flags", SUBSET, ids=lambda f: "varB{}-varC{}-g{}-z{}-extras{}-L{}".format(*map(int, f)))
def test_triton_on_mamba_grid_matches_the_oracle(flags):
    with_extras, length = flags[4], flags[5]
    inputs = grid_inputs(*flags)
    dout = torch.randn(2, 4, length, generator=torch.Generator().manual_seed(1))
    ref_out, ref_state, ref_grads = oracle_with_grads(inputs, dout, delta_softplus=with_extras)
    out, state, grads = backend_with_grads("triton", inputs, dout, with_extras, return_last_state=with_extras)
    got, expected = {"out": out, **grads}, {"out": ref_out, **ref_grads}
    if with_extras:
        got["last_state"], expected["last_state"] = state, ref_state
    assert_within_mamba_tolerances(got, expected, torch.float32, inputs)


def test_triton_reset_every_equals_the_oracle_run_per_segment():
    inputs = make_scan_inputs(2, 4, 8, 128, seed=0)
    dout = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(1))
    ref_out, _, ref_grads = oracle_with_grads(inputs, dout, True, reset_every=32)
    out, _, grads = backend_with_grads("triton", inputs, dout, True, False, reset_every=32)
    assert_within_mamba_tolerances({"out": out, **grads}, {"out": ref_out, **ref_grads}, torch.float32, inputs)
