"""The selective-scan op interface: reference vs fast path, gradients, resets, folding, errors."""

import re

import pytest
import torch

from scan_inputs import grads_of, make_scan_inputs
from sf_mamba.ops import resolve_backend, selective_scan
from sf_mamba_kernels.selective_scan import selective_scan_recurrent, selective_scan_reference

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("reset_every", [None, 4])
@pytest.mark.parametrize("with_z", [True, False])
def test_fast_path_matches_reference_outputs_and_grads(groups, reset_every, with_z):
    inputs = make_scan_inputs(batch=3, channels=4, d_state=5, length=12, groups=groups)
    if not with_z:
        inputs.pop("z")
    grad_out = torch.randn(3, 4, 12)
    out_ref, g_ref = grads_of(lambda **k: selective_scan(**k, reset_every=reset_every, backend="reference"),
                              inputs, grad_out)
    out_fast, g_fast = grads_of(lambda **k: selective_scan(**k, reset_every=reset_every, backend="torch"),
                                inputs, grad_out)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-4, msg=name)


def test_fixed_b_and_c_match_reference():
    inputs = make_scan_inputs(batch=2, channels=3, d_state=4, length=7)
    inputs["B"], inputs["C"] = torch.randn(3, 4), torch.randn(3, 4)
    grad_out = torch.randn(2, 3, 7)
    out_ref, g_ref = grads_of(lambda **k: selective_scan(**k, backend="reference"), inputs, grad_out)
    out_fast, g_fast = grads_of(lambda **k: selective_scan(**k, backend="torch"), inputs, grad_out)
    torch.testing.assert_close(out_fast, out_ref)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("impl", [selective_scan_reference, selective_scan_recurrent])
@pytest.mark.parametrize("reset_every", [None, 3])
def test_float64_gradcheck(impl, reset_every):
    inputs = make_scan_inputs(batch=2, channels=3, d_state=2, length=6, groups=None, dtype=torch.float64,
                              requires_grad=True, s4d_a=True)
    values = [inputs[n] for n in NAMES]

    def fn(*args):
        return impl(*args[:7], delta_bias=args[7], reset_every=reset_every)

    assert torch.autograd.gradcheck(fn, values)


def test_reference_matches_closed_form_on_tiny_input():
    # One channel, one state, no softplus: h_t = a_t h_{t-1} + d_t B_t u_t written out by hand.
    u = torch.tensor([[[1.0, 2.0, 3.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 2.0, 0.25]]])
    A = torch.tensor([[-1.0]])
    B = torch.tensor([[[1.0, 0.5, 2.0, 1.0]]])
    C = torch.tensor([[[2.0, 1.0, 1.0, 3.0]]])
    a = torch.exp(delta[0, 0] * A[0, 0])
    x = delta[0, 0] * B[0, 0] * u[0, 0]
    h = [x[0]]
    for t in range(1, 4):
        h.append(a[t] * h[-1] + x[t])
    expected = torch.stack(h) * C[0, 0]
    for backend in ("reference", "torch"):
        out = selective_scan(u, delta, A, B, C, delta_softplus=False, backend=backend)
        torch.testing.assert_close(out[0, 0], expected)
        # reset_every=2: the state restarts at t=2, so h2 = x2 and h3 = a3 x2 + x3.
        out = selective_scan(u, delta, A, B, C, delta_softplus=False, reset_every=2, backend=backend)
        torch.testing.assert_close(out[0, 0, 2:], torch.stack([x[2], a[3] * x[2] + x[3]]) * C[0, 0, 2:])


def test_reset_equals_independent_segments():
    inputs = make_scan_inputs(batch=2, channels=3, d_state=4, length=12)
    whole = selective_scan(**inputs, reset_every=4, backend="torch")
    for start in range(0, 12, 4):
        part = {k: (v[..., start:start + 4] if v.dim() == 3 else v) for k, v in inputs.items()}
        torch.testing.assert_close(whole[..., start:start + 4], selective_scan(**part, backend="torch"))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("fold", [2, 3, 6])
def test_fold_with_reset_equals_unfolded_outputs_and_grads(backend, fold):
    inputs = make_scan_inputs(batch=6, channels=4, d_state=4, length=9, groups=2)
    grad_out = torch.randn(6, 4, 9)
    out_1, g_1 = grads_of(lambda **k: selective_scan(**k, backend=backend), inputs, grad_out)
    out_k, g_k = grads_of(lambda **k: selective_scan(**k, reset_every=9, fold=fold, backend=backend),
                          inputs, grad_out)
    if backend == "reference":  # same op sequence per step: bit-exact
        assert torch.equal(out_k, out_1)
    assert relative_error(out_k, out_1) <= 1e-5
    for name in g_1:
        assert relative_error(g_k[name], g_1[name]) <= 1e-5, name
    # Without the reset the state leaks from one image into the next: the result must differ.
    leaked = selective_scan(**inputs, fold=fold, backend=backend)
    assert relative_error(leaked, out_1) > 1e-3


@pytest.mark.parametrize("batch,fold", [(5, 2), (7, 3), (2, 4)])
def test_fold_handles_batch_not_divisible_by_k(batch, fold):
    inputs = make_scan_inputs(batch=batch, channels=3, d_state=4, length=5)
    unfolded = selective_scan(**inputs, backend="torch")
    folded = selective_scan(**inputs, reset_every=5, fold=fold, backend="torch")
    assert folded.shape == unfolded.shape
    assert relative_error(folded, unfolded) <= 1e-5


def test_low_precision_inputs_accumulate_in_fp32():
    inputs = make_scan_inputs(batch=2, channels=4, d_state=4, length=16)
    ref = selective_scan(**inputs, backend="reference")
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        low = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
        out = selective_scan(**low, backend="torch")
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=5 * tol)


def test_auto_backend_is_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("change,message", [
    (lambda k: k.update(u=k["u"][0]), "u must be a (batch, channels, length)"),
    (lambda k: k.update(delta=k["delta"][:, :, :-1]), "delta must have shape"),
    (lambda k: k.update(A=k["A"][:-1]), "A must be (channels=4"),
    (lambda k: k.update(B=k["B"][:, :, :-1]), "B must have shape"),
    (lambda k: k.update(C=torch.randn(2, 3, 4, 12)), "C has 3 groups"),
    (lambda k: k.update(D=torch.randn(5)), "D must have shape"),
    (lambda k: k.update(z=k["z"].int()), "z must have a floating dtype"),
    (lambda k: k.update(delta_bias=[0.0] * 4), "delta_bias must be a torch.Tensor"),
])
def test_bad_inputs_name_the_argument(change, message):
    inputs = make_scan_inputs(batch=2, channels=4, d_state=4, length=12)
    change(inputs)
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        selective_scan(**inputs)


def test_bad_options_name_the_argument():
    inputs = make_scan_inputs(batch=2, channels=4, d_state=4, length=12)
    with pytest.raises(ValueError, match="reset_every=5 must divide"):
        selective_scan(**inputs, reset_every=5)
    with pytest.raises(ValueError, match="fold must be a positive int"):
        selective_scan(**inputs, fold=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs, backend="cuda")
    with pytest.raises(TypeError, match="A must be real"):
        selective_scan(**{**inputs, "A": inputs["A"].to(torch.complex64)})
