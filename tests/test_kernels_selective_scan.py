"""The selective-scan interface against an fp64 re-statement of mamba_ssm's reference, on mamba_ssm's
own test grid (shared notes, kernels.md §1.5), plus resets, folding, the drop-in signature and
argument errors. The Triton backend runs a subset of the grid in test_kernels_selective_scan_triton.py.
"""

import inspect
import re

import pytest
import torch

from sf_mamba_kernels.selective_scan import (
    BACKENDS, interface, resolve_backend, selective_scan_fn, selective_scan_recurrent, selective_scan_ref)
from sf_mamba_kernels.selective_scan.testing import (
    MAMBA_TOLERANCES, SCAN_ARGS, gradients, make_scan_inputs, mamba_tolerances, run_with_grads, worst_excess)

# ---------------------------------------------------------------------------------------------- the oracle


def mamba_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's ``selective_scan_ref`` semantics (notes §1.1), restated in float64 step by step.

    Returns (out, final state). Knows nothing of resets or folding: those are tested against it by
    running it per segment / per row.
    """
    u, delta, A = u.double(), delta.double(), A.double()
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:  # log(1 + e^x), and x itself above 20 (mamba_ssm's threshold)
        delta = torch.where(delta <= 20, torch.log1p(torch.exp(delta.clamp(max=20))), delta)

    def step_value(X, t):
        """B or C at step t as (batch, dim, N): fixed (dim, N) broadcast, groups spread over channels."""
        if X.dim() == 2:
            return X.double()[None]
        X = X.double() if X.dim() == 4 else X.double()[:, None]
        group_of_channel = torch.arange(dim) // (dim // X.shape[1])
        return X[:, group_of_channel, :, t]

    state = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + delta[:, :, t, None] * step_value(B, t) * u[:, :, t, None]
        ys.append((state * step_value(C, t)).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + D.double()[:, None] * u
    if z is not None:
        z = z.double()
        out = out * z * torch.sigmoid(z)
    return out, state


def segment(inputs: dict, start: int, stop: int) -> dict:
    """The inputs restricted to time steps [start, stop) (fixed B/C and per-channel tensors kept)."""
    def cut(name, x):
        if x is None or name in ("A", "D", "delta_bias") or (name in ("B", "C") and x.dim() == 2):
            return x
        return x[..., start:stop]
    return {name: cut(name, x) for name, x in inputs.items()}


def oracle_with_grads(inputs, dout, delta_softplus, reset_every=None):
    """Oracle output, final state and fp64 gradients; with ``reset_every`` it runs once per segment."""
    leaves = {k: (v.detach().double().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    length = inputs["u"].shape[-1]
    period = reset_every or length
    outs = []
    for start in range(0, length, period):
        out, state = mamba_oracle(**segment(leaves, start, start + period), delta_softplus=delta_softplus)
        outs.append(out)
    out = torch.cat(outs, dim=-1)
    out.backward(dout.double())
    return out.detach(), state.detach(), gradients(leaves)


def backend_with_grads(backend, inputs, dout, delta_softplus, return_last_state, reset_every=None):
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    result = selective_scan_fn(**leaves, delta_softplus=delta_softplus, return_last_state=return_last_state,
                               reset_every=reset_every, backend=backend)
    out, state = result if return_last_state else (result, None)
    out.backward(dout.to(out.dtype))
    return out.detach(), state, gradients(leaves)


def assert_within_mamba_tolerances(got, expected, dtype, inputs):
    tolerances = mamba_tolerances(dtype, inputs["z"] is not None, inputs["B"].dim() > 2, inputs["C"].dim() > 2)
    excess = worst_excess(got, expected, tolerances)
    assert all(v <= 0 for v in excess.values()), {k: v for k, v in excess.items() if v > 0}


# ---------------------------------------------------------------------------------------------- mamba's grid

# mamba_ssm's grid (batch 2, dim 4, dstate 8, seed 0), fp32; L = 128 for every flag combination,
# the longer lengths of its grid on one combination each to keep CPU time small.
FLAGS = []
for variable_b in (True, False):
    for variable_c in (True, False):
        for groups in (1, 2):
            if groups == 2 and not (variable_b or variable_c):
                continue  # groups only shape input-dependent B/C
            for has_z in (True, False):
                for with_extras in (True, False):  # D, delta_bias, softplus and return_last_state together
                    FLAGS.append((variable_b, variable_c, groups, has_z, with_extras, 128))
FLAGS += [(True, True, 2, True, True, 256), (True, False, 1, True, False, 512)]


def grid_inputs(variable_b, variable_c, groups, has_z, with_extras, length):
    return make_scan_inputs(2, 4, 8, length, groups=groups, fixed_b=not variable_b, fixed_c=not variable_c,
                            has_z=has_z, has_d=with_extras, has_bias=with_extras, seed=0)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "varB{}-varC{}-g{}-z{}-extras{}-L{}".format(*map(int, f)))
def test_mamba_grid_fp32_matches_the_oracle(flags):
    with_extras, length = flags[4], flags[5]
    inputs = grid_inputs(*flags)
    dout = torch.randn(2, 4, length, generator=torch.Generator().manual_seed(1))
    ref_out, ref_state, ref_grads = oracle_with_grads(inputs, dout, delta_softplus=with_extras)
    for backend in ("torch", "reference"):
        out, state, grads = backend_with_grads(backend, inputs, dout, with_extras, return_last_state=with_extras)
        got, expected = {"out": out, **grads}, {"out": ref_out, **ref_grads}
        if with_extras:
            got["last_state"], expected["last_state"] = state, ref_state
            assert state.shape == (2, 4, 8) and state.dtype == torch.float32
        assert out.dtype == torch.float32 and all(g.dtype == inputs[n].dtype for n, g in grads.items())
        assert_within_mamba_tolerances(got, expected, torch.float32, inputs)
        if backend == "reference":  # the spec computes in fp64: it agrees far beyond mamba's tolerances
            for name in expected:
                error = (got[name].double() - expected[name]).norm() / expected[name].norm().clamp_min(1e-30)
                assert error < 1e-6, (name, float(error))


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("reset_every", [1, 16, 32])
def test_reset_every_equals_the_oracle_run_per_segment(backend, reset_every):
    inputs = make_scan_inputs(2, 4, 8, 128, groups=2, seed=0)
    dout = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(1))
    ref_out, ref_state, ref_grads = oracle_with_grads(inputs, dout, True, reset_every=reset_every)
    out, state, grads = backend_with_grads(backend, inputs, dout, True, True, reset_every=reset_every)
    assert_within_mamba_tolerances({"out": out, "last_state": state, **grads},
                                   {"out": ref_out, "last_state": ref_state, **ref_grads}, torch.float32, inputs)
    # teeth: the same scan without resets is far from the per-segment oracle
    plain = selective_scan_fn(**inputs, delta_softplus=True, backend=backend)
    assert (plain.double() - ref_out).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_within_mamba_tolerances(dtype):
    inputs = make_scan_inputs(2, 4, 8, 128, groups=1, dtype=dtype, seed=0)
    dout = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref_out, _, ref_grads = oracle_with_grads(inputs, dout, True)
    out, _, grads = backend_with_grads("torch", inputs, dout, True, False)
    assert out.dtype == dtype and grads["u"].dtype == dtype and grads["A"].dtype == torch.float32
    assert_within_mamba_tolerances({"out": out, **grads}, {"out": ref_out, **ref_grads}, dtype, inputs)


# ---------------------------------------------------------------------------------------------- drop-in signature

MAMBA_SIGNATURE = [("u", inspect.Parameter.empty), ("delta", inspect.Parameter.empty),
                   ("A", inspect.Parameter.empty), ("B", inspect.Parameter.empty), ("C", inspect.Parameter.empty),
                   ("D", None), ("z", None), ("delta_bias", None), ("delta_softplus", False),
                   ("return_last_state", False)]


def test_signature_is_mamba_ssm_plus_keyword_only_options():
    params = list(inspect.signature(selective_scan_fn).parameters.values())
    positional = [(p.name, p.default) for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == MAMBA_SIGNATURE
    keyword_only = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}
    assert keyword_only == {"reset_every": None, "fold": 1, "backend": "auto"}


def test_a_call_ported_from_mamba_ssm_keeps_its_meaning():
    inputs = make_scan_inputs(2, 4, 8, 32, seed=3)
    args = [inputs[name] for name in SCAN_ARGS]  # u, delta, A, B, C, D, z, delta_bias: mamba's order
    expected_out, expected_state = mamba_oracle(*args, delta_softplus=True)
    out, state = selective_scan_fn(*args, True, True)  # delta_softplus, return_last_state, positionally
    torch.testing.assert_close(out.double(), expected_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(state.double(), expected_state, rtol=6e-4, atol=2e-3)
    # mamba_ssm's default is no softplus and no last state
    plain = selective_scan_fn(*args)
    torch.testing.assert_close(plain.double(), mamba_oracle(*args)[0], rtol=6e-4, atol=2e-3)


def test_reset_every_passed_positionally_is_refused():
    """The old 10th positional argument was reset_every: such a call must fail, not change meaning."""
    inputs = make_scan_inputs(2, 4, 8, 12)
    args = [inputs[name] for name in SCAN_ARGS]
    with pytest.raises(TypeError, match=r"return_last_state must be a bool, got 6 \(reset_every, fold and "
                                        r"backend are keyword-only\)"):
        selective_scan_fn(*args, True, 6)
    with pytest.raises(TypeError):
        selective_scan_fn(*args, True, False, 6)


# ---------------------------------------------------------------------------------------------- folding


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("fold", [2, 3, 4, 6])
def test_fold_with_reset_equals_unfolded(backend, fold):
    """Outputs, every gradient and the last states; fold 4 leaves a ragged last group of 2 rows."""
    inputs = make_scan_inputs(6, 4, 4, 9, groups=2, fixed_c=True, seed=2)

    def run(**kw):
        return lambda **x: selective_scan_fn(**x, delta_softplus=True, backend=backend, **kw)

    out_1, g_1 = run_with_grads(run(), inputs)
    out_k, g_k = run_with_grads(run(reset_every=9, fold=fold), inputs)
    if backend == "reference":  # fp64 inside: bit-exact after the cast
        assert torch.equal(out_k, out_1)
    assert relative_error(out_k, out_1) <= 1e-6
    for name in g_1:
        assert relative_error(g_k[name], g_1[name]) <= 1e-6, name
    _, state_1 = run(return_last_state=True)(**inputs)
    _, state_k = run(return_last_state=True, reset_every=9, fold=fold)(**inputs)
    assert relative_error(state_k, state_1) <= 1e-6
    # teeth: without the reset the state leaks from one image into the next
    assert relative_error(run(fold=fold)(**inputs), out_1) > 1e-3


def test_fold_larger_than_the_batch_folds_the_whole_batch(monkeypatch):
    seen = []
    real = interface.selective_scan_recurrent

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(interface, "selective_scan_recurrent", spy)
    inputs = make_scan_inputs(3, 2, 4, 5)
    out = selective_scan_fn(**inputs, reset_every=5, fold=10, backend="torch")
    assert seen == [3]
    torch.testing.assert_close(out, selective_scan_fn(**inputs, backend="torch"), rtol=1e-6, atol=1e-6)


def _spy_fold(monkeypatch):
    seen = []
    real = interface.selective_scan_recurrent
    monkeypatch.setattr(interface, "selective_scan_recurrent", lambda *args: seen.append(args[-1]) or real(*args))
    return seen


def test_fold_auto_is_one_on_cpu(monkeypatch):
    seen = _spy_fold(monkeypatch)
    inputs = make_scan_inputs(4, 2, 4, 5)
    selective_scan_fn(**inputs, reset_every=5, fold="auto", backend="torch")
    assert seen == [1]


@pytest.mark.parametrize("table_fold,predicted,expected", [
    (4, 1.3, 4),     # the table's k, predicted faster: kept
    (4, 0.8, 1),     # predicted slower than k=1: never picked
    (4, None, 4),    # no static figure for this shape: the measured table decides
    (16, 1.2, 6),    # clamped to the batch (once)
])
def test_fold_auto_takes_the_table_unless_predicted_slower(monkeypatch, table_fold, predicted, expected):
    seen = _spy_fold(monkeypatch)
    asked = []
    monkeypatch.setattr(interface.lut, "lookup_fold", lambda *a: table_fold)
    monkeypatch.setattr(interface, "_predicted_fold_speedup", lambda *a: asked.append(a) or predicted)
    inputs = make_scan_inputs(6, 2, 4, 5)
    out = selective_scan_fn(**inputs, reset_every=5, fold="auto", backend="torch")
    assert seen == [expected]
    assert asked and asked[0][:5] == (6, 5, 2, 4, min(table_fold, 6))  # batch, length, channels, d_state, k
    torch.testing.assert_close(out, selective_scan_fn(**inputs, backend="torch"), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- small exact checks


@pytest.mark.parametrize("impl", [selective_scan_ref, selective_scan_recurrent])
@pytest.mark.parametrize("reset_every", [None, 3])
def test_float64_gradcheck(impl, reset_every):
    inputs = make_scan_inputs(2, 3, 2, 6, dtype=torch.float64, s4d=True, requires_grad=True)
    values = [inputs[n] for n in SCAN_ARGS]

    def fn(*args):
        return impl(*args, True, False, reset_every, 1)

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
        out = selective_scan_fn(u, delta, A, B, C, backend=backend)
        torch.testing.assert_close(out[0, 0], expected)
        # reset_every=2: the state restarts at t=2, so h2 = x2 and h3 = a3 x2 + x3.
        out = selective_scan_fn(u, delta, A, B, C, reset_every=2, backend=backend)
        torch.testing.assert_close(out[0, 0, 2:], torch.stack([x[2], a[3] * x[2] + x[3]]) * C[0, 0, 2:])


def test_strided_views_give_the_contiguous_result():
    """The model passes channel-last projections as (batch, channels, L) views."""
    inputs = make_scan_inputs(2, 3, 4, 7, seed=4)
    views = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if k in ("u", "delta", "B", "C", "z") else v)
             for k, v in inputs.items()}
    assert views["delta"].stride(-1) != 1
    for backend in ("torch", "reference"):
        torch.testing.assert_close(selective_scan_fn(**views, backend=backend),
                                   selective_scan_fn(**inputs, backend=backend))


def test_input_generator_follows_mamba_law():
    x = make_scan_inputs(64, 16, 8, 32, groups=2, seed=0)
    assert x["B"].shape == (64, 2, 8, 32) and x["A"].dtype == torch.float32
    assert -0.5 <= x["A"].min() and x["A"].max() <= 0
    assert 0 <= x["delta"].min() and x["delta"].max() <= 0.5 and 0 <= x["delta_bias"].min() <= 0.5
    assert abs(float(x["u"].mean())) < 0.05 and abs(float(x["u"].std()) - 1) < 0.05
    fixed = make_scan_inputs(2, 4, 8, 6, fixed_b=True, has_z=False, dtype=torch.bfloat16)
    assert fixed["B"].shape == (4, 8) and fixed["B"].dtype == torch.float32 and fixed["C"].dtype == torch.bfloat16
    assert fixed["z"] is None
    assert torch.equal(make_scan_inputs(seed=5)["u"], make_scan_inputs(seed=5)["u"])
    assert set(MAMBA_TOLERANCES) >= {torch.float32, torch.float16, torch.bfloat16}


# ---------------------------------------------------------------------------------------------- errors


def test_auto_backend_is_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert BACKENDS == ("auto", "torch", "reference", "triton")


@pytest.mark.parametrize("change,message", [
    (lambda k: k.update(u=k["u"][0]), "u must be a (batch, channels, length)"),
    (lambda k: k.update(delta=k["delta"][:, :, :-1]), "delta must have shape"),
    (lambda k: k.update(A=k["A"][:-1]), "A must be (channels=4"),
    (lambda k: k.update(B=k["B"][:, :, :-1]), "B must have shape"),
    (lambda k: k.update(C=torch.randn(2, 3, 4, 12)), "C has 3 groups"),
    (lambda k: k.update(C=torch.randn(2, 4, 4, 12, 1)), "C must be (channels, d_state)"),
    (lambda k: k.update(D=torch.randn(5)), "D must have shape"),
    (lambda k: k.update(z=k["z"].int()), "z must have a floating dtype"),
    (lambda k: k.update(delta_bias=[0.0] * 4), "delta_bias must be a torch.Tensor"),
    (lambda k: k.update(A=k["A"].to(torch.complex64)), "A must be real"),
    (lambda k: k.update(delta_softplus=1), "delta_softplus must be a bool, got 1"),
    (lambda k: k.update(A=k["A"].to("meta")), "A is on meta but u is on cpu"),
    (lambda k: k.update(reset_every=5), "reset_every=5 must divide the scanned sequence length 12"),
    (lambda k: k.update(reset_every=0), "reset_every must be a positive int or None, got 0"),
    (lambda k: k.update(fold=0), "fold must be a positive int or 'auto', got 0"),
    (lambda k: k.update(fold=True), "fold must be a positive int or 'auto', got True"),
    (lambda k: k.update(fold="auto"), "fold='auto' needs reset_every dividing the length 12 (got None)"),
    (lambda k: k.update(fold=2, reset_every=5), "reset_every=5 must divide the scanned sequence length 24"),
    (lambda k: k.update(backend="cuda"), "backend must be one of"),
])
def test_bad_arguments_are_named(change, message):
    inputs = make_scan_inputs(2, 4, 4, 12)
    change(inputs)
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        selective_scan_fn(**inputs)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if interface._triton_impl() is None:
        pytest.skip("triton is not installed")
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        selective_scan_fn(**make_scan_inputs(2, 4, 4, 12), backend="triton")
    with pytest.raises(TypeError, match="u has dtype torch.float64, which backend='triton' does not support"):
        selective_scan_fn(**make_scan_inputs(2, 4, 4, 12, dtype=torch.float64), backend="triton")


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_a_non_finite_image_does_not_leak_into_its_fold_group(backend):
    """A reset replaces the state: 0 * inf would carry NaN into the next images of the group."""
    inputs = make_scan_inputs(4, 2, 4, 6, seed=8)
    poisoned = dict(inputs, u=inputs["u"].clone())
    poisoned["u"][0, :, 3] = float("inf")
    clean, clean_grads = run_with_grads(lambda **x: selective_scan_fn(**x, backend=backend), inputs)
    out, grads = run_with_grads(lambda **x: selective_scan_fn(**x, reset_every=6, fold=4, backend=backend), poisoned)
    assert not torch.isfinite(out[0]).all()
    torch.testing.assert_close(out[1:], clean[1:], rtol=1e-6, atol=1e-6)
    for name in ("u", "delta", "z"):  # per-image gradients of the clean images stay finite and equal
        torch.testing.assert_close(grads[name][1:], clean_grads[name][1:], rtol=1e-6, atol=1e-6, msg=name)


def test_fold_auto_never_picks_a_fold_the_static_model_predicts_slower(monkeypatch):
    """With kern-triton's real static model (sm_90): whatever k the table holds, the backend gets 1
    where the model predicts k slower than k = 1, and the table's k where it predicts a gain."""
    static_model = pytest.importorskip("sf_mamba_kernels.selective_scan.static_model")
    slower = faster = None
    for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for length, channels in ((51, 320), (198, 160)):
            for fold in (2, 4, 5, 8, 16, 32):
                if fold > batch:
                    continue
                try:
                    speedup = static_model.predict_fold_speedup(batch, length, channels, 8, fold, "float32")
                except (KeyError, ValueError, OSError):
                    continue
                if speedup < 1 and slower is None:
                    slower = (batch, length, channels, fold)
                if speedup > 1 and faster is None:
                    faster = (batch, length, channels, fold)
    assert slower or faster, "the static model covers none of the model's scan shapes"
    for case, expected_is_table in ((slower, False), (faster, True)):
        if case is None:
            continue
        batch, length, channels, fold = case
        seen = []
        monkeypatch.setattr(interface.lut, "lookup_fold", lambda *a, k=fold: k)
        monkeypatch.setattr(interface, "selective_scan_recurrent", lambda *args: seen.append(args[-1]))
        # shapes of the model's scan: the inputs themselves are never read by the spy backend
        inputs = make_scan_inputs(batch, channels, 8, length, has_z=False)
        selective_scan_fn(**inputs, reset_every=length, fold="auto", backend="torch")
        assert seen == [fold if expected_is_table else 1], case
