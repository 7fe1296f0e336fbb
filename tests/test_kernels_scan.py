"""Triton segmented selective scan vs the fp32 reference, under the interpreter (CPU).

TRITON_INTERPRET must be set before triton decorates the kernels, hence the first lines.
Shapes are tiny: the interpreter runs every program serially in Python.
"""

import os

_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import sf_mamba_kernels.selective_scan.triton_scan as triton_scan  # noqa: E402
from sf_mamba_kernels.selective_scan import interpreter_patch  # noqa: E402

from sf_mamba_kernels.selective_scan import resolve_backend, selective_scan_fn as selective_scan  # noqa: E402

if type(triton_scan._scan_fwd_kernel).__name__ != "InterpretedFunction":
    # imported earlier without TRITON_INTERPRET: decorate the kernels again for the interpreter
    triton_scan = importlib.reload(triton_scan)

pytestmark = pytest.mark.triton
REPO = Path(__file__).resolve().parents[1]

# mamba_ssm tests/ops/test_selective_scan.py tolerances (docs/kernels.md)
TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(scope="module", autouse=True)
def fast_interpreter_scan():
    os.environ["TRITON_INTERPRET"] = "1"
    installed = interpreter_patch.install()
    yield installed
    interpreter_patch.uninstall()
    # leave the environment as found for the test modules that run after this one
    if _INTERPRET_BEFORE is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE


def make_inputs(batch, channels, n_state, length, *, dtype=torch.float32, groups=None, fixed_bc=False,
                has_z=True, has_d=True, has_bias=True, s4d=False, seed=0):
    """mamba_ssm's input law (A=-0.5 rand, delta=0.5 rand ...); ``s4d`` uses A=-(1..N), larger delta."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    if s4d:
        A = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1)
        delta = 2.0 * rand(batch, channels, length)
    else:
        A = -0.5 * rand(channels, n_state)
        delta = 0.5 * rand(batch, channels, length)
    if fixed_bc:
        B, C = randn(channels, n_state), randn(channels, n_state)
    elif groups:
        B, C = randn(batch, groups, n_state, length), randn(batch, groups, n_state, length)
    else:
        B, C = randn(batch, n_state, length), randn(batch, n_state, length)
    return dict(
        u=randn(batch, channels, length).to(dtype), delta=delta.to(dtype), A=A,
        B=B if fixed_bc else B.to(dtype), C=C if fixed_bc else C.to(dtype),
        D=randn(channels) if has_d else None, z=randn(batch, channels, length).to(dtype) if has_z else None,
        delta_bias=0.5 * rand(channels) if has_bias else None,
    )


def run_with_grads(fn, inputs, upstream_seed=1):
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = fn(**leaves)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed)).to(out.dtype)
    out.backward(dout)
    return out.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def triton_fn(fold, reset_every, softplus=True, block_t=None):
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return triton_scan.selective_scan_triton(u, delta, A, B, C, z=z, fold=fold, D=D, delta_bias=delta_bias,
                                                 delta_softplus=softplus, reset_every=reset_every, block_t=block_t)
    return fn


def reference_fn(fold, reset_every, softplus=True):
    """The sequential fp32 oracle with *physical* folding (the op interface's reshape path)."""
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=softplus,
                              reset_every=reset_every, fold=fold, backend="reference")
    return fn


def assert_matches_mamba_tolerances(ref, got, dtype, has_z):
    rtol, atol = TOLERANCES[dtype]
    rtolw, atolw = (max(1e-3, rtol), max(1e-3, atol)) if has_z else (1e-3, 1e-3)
    out_ref, grads_ref = ref
    out, grads = got
    torch.testing.assert_close(out.float(), out_ref.float(), rtol=rtol, atol=atol, msg=lambda m: f"out: {m}")
    per_grad = {"u": (2 * rtol, 2 * atol), "delta": (5 * rtol, 10 * atol), "A": (rtolw, 5 * atolw),
                "B": (rtol, atol), "C": (rtol, atol), "D": (rtolw, atolw), "z": (rtolw, atolw),
                "delta_bias": (rtolw, atolw)}
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        g = grads[name]
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, name
        r, a = per_grad[name]
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=r, atol=a, msg=lambda m, n=name: f"d{n}: {m}")


# (batch, channels, N, L, fold, reset_every, block_t, options): each case names the boundary it covers.
CASES = {
    # 4 images of 5 folded into 20 tokens, tile 16: resets at 0, 5, 10 (mid-tile) and 15 (a tile's last column)
    "reset_mid_tile_and_tile_end": (4, 3, 8, 5, 4, 5, 16, {}),
    # 4 images of 8, tile 16: the reset at 16 is exactly a tile start
    "reset_at_tile_start": (4, 2, 4, 8, 4, 8, 16, {}),
    # k=1, L=24 is ragged against the 16-token tile, state crosses the tile boundary
    "k1_ragged_length": (2, 2, 8, 24, 1, 24, 16, {}),
    # batch 5, k=2: last group holds one row; two groups of B/C; no z, D, bias or softplus
    "ragged_last_group_groups2_bare": (5, 4, 4, 6, 2, 6, 16, dict(groups=2, has_z=False, has_d=False,
                                                                  has_bias=False, softplus=False)),
    # B/k = 1: one program per channel walks the whole batch; reset_every = 2 images
    "single_group_reset_every_2L": (4, 2, 8, 3, 4, 6, 16, {}),
    # a single program in the grid (batch 1, one channel); default tile size
    "single_program": (1, 1, 8, 12, 1, 12, None, {}),
    # T = 1: every token restarts, h_t = delta_t B_t u_t
    "reset_every_token": (2, 2, 4, 4, 2, 1, 16, {}),
    # no reset with k=2: state leaks between folded rows, exactly like the physically folded reference
    "fold_without_reset_leaks": (4, 2, 4, 5, 2, None, 16, {}),
    # fixed (D, N) B and C
    "fixed_bc": (3, 2, 4, 6, 3, 6, 16, dict(fixed_bc=True)),
    # S4D-real A = -(1..N) with larger delta: decays near 0
    "s4d_decays": (2, 2, 8, 10, 2, 10, 16, dict(s4d=True)),
    # a stage-4-like image length (49 = 7x7) with N=16, two images in a 32-token tiling
    "vision_length_49": (2, 2, 16, 49, 2, 49, 32, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference_fp32(case):
    batch, channels, n_state, length, fold, reset_every, block_t, opts = CASES[case]
    opts = dict(opts)
    softplus = opts.pop("softplus", True)
    inputs = make_inputs(batch, channels, n_state, length, **opts)
    ref = run_with_grads(reference_fn(fold, reset_every, softplus), inputs)
    got = run_with_grads(triton_fn(fold, reset_every, softplus, block_t), inputs)
    assert_matches_mamba_tolerances(ref, got, torch.float32, inputs["z"] is not None)


@pytest.mark.parametrize("block_d", [1, 2, 4])
def test_channel_blocks_share_bc_tiles(block_d):
    """BLOCK_D channels per program (one B/C load, dB/dC summed before the atomics), 2 groups of 4."""
    inputs = make_inputs(3, 8, 4, 7, groups=2, seed=11)
    ref = run_with_grads(reference_fn(2, 7), inputs)

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return triton_scan.selective_scan_triton(u, delta, A, B, C, z=z, fold=2, D=D, delta_bias=delta_bias,
                                                 reset_every=7, block_t=16, block_d=block_d)

    assert_matches_mamba_tolerances(ref, run_with_grads(fn, inputs), torch.float32, has_z=True)


def test_default_block_d_divides_the_group():
    assert triton_scan.pick_block_d(160, 8) == 4
    assert triton_scan.pick_block_d(6, 8) == 2
    assert triton_scan.pick_block_d(5, 8) == 1
    assert triton_scan.pick_block_d(64, 16) == 2
    with pytest.raises(ValueError, match="block_d must be a power of 2 dividing"):
        triton_scan.pick_block_d(6, 8, requested=4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_matches_reference_low_precision(dtype):
    inputs = make_inputs(3, 2, 8, 7, dtype=dtype, groups=1)
    ref = run_with_grads(reference_fn(2, 7), inputs)
    got = run_with_grads(triton_fn(2, 7, block_t=16), inputs)
    assert got[0].dtype == dtype and got[1]["u"].dtype == dtype and got[1]["A"].dtype == torch.float32
    assert_matches_mamba_tolerances(ref, got, dtype, has_z=True)


def test_reverse_scan_by_flip_matches(monkeypatch):
    """The tl.flip fallback of the backward's reverse scan (used if reverse=True is wrong on a GPU)."""
    monkeypatch.setenv("SF_MAMBA_SCAN_REVERSE", "flip")
    assert not triton_scan.reverse_scan_is_native(torch.device("cpu"), 8, 16)
    inputs = make_inputs(2, 2, 4, 9, seed=3)
    ref = run_with_grads(reference_fn(2, 9), inputs)
    got = run_with_grads(triton_fn(2, 9, block_t=16), inputs)
    assert_matches_mamba_tolerances(ref, got, torch.float32, has_z=True)


def test_fold_invariance_through_triton():
    """Logical fold with reset_every=L equals the unfolded Triton run, outputs and every gradient."""
    length = 6
    inputs = make_inputs(5, 2, 4, length, seed=7)
    base_out, base_grads = run_with_grads(triton_fn(1, length, block_t=16), inputs)
    for fold in (2, 5):  # 2 leaves a ragged last group of one row; 5 = whole batch in one program
        out, grads = run_with_grads(triton_fn(fold, length, block_t=16), inputs)
        torch.testing.assert_close(out, base_out, rtol=1e-5, atol=1e-5)
        for name in base_grads:
            torch.testing.assert_close(grads[name], base_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    # teeth: without the reset the folded rows leak state into each other
    with torch.no_grad():
        leaked = triton_fn(2, None, block_t=16)(**inputs)
    assert (leaked - base_out).abs().max() > 1e-2


def test_no_grad_forward_skips_saving_and_matches():
    inputs = make_inputs(2, 2, 4, 8)
    with torch.no_grad():
        out = triton_fn(2, 8, block_t=16)(**inputs)
        ref = reference_fn(2, 8)(**inputs)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)


def test_op_interface_dispatches_to_triton():
    inputs = make_inputs(4, 2, 4, 5)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    kw = dict(D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], reset_every=5, fold=2)
    out = selective_scan(*args, **kw, backend="triton")
    ref = selective_scan(*args, **kw, backend="reference")
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)


def test_op_interface_accepts_channel_last_views():
    """The model passes delta as a (B, L, D) projection transposed; the op makes L unit-stride."""
    inputs = make_inputs(2, 3, 4, 5)
    delta_view = inputs["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    assert delta_view.stride(-1) != 1
    args = (inputs["u"], delta_view, inputs["A"], inputs["B"], inputs["C"])
    out = selective_scan(*args, D=inputs["D"], reset_every=5, fold=2, backend="triton")
    ref = selective_scan(*args, D=inputs["D"], reset_every=5, fold=2, backend="reference")
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)


def test_auto_backend_picks_triton_for_cuda_and_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_interpreter_patch_equals_stock_scan():
    """The test-only vectorised interpreter scan gives the stock interpreter's result."""
    inputs = make_inputs(2, 1, 4, 10, seed=5)
    fn = triton_fn(2, 10, block_t=16)
    patched = run_with_grads(fn, inputs)
    interpreter_patch.uninstall()
    try:
        stock = run_with_grads(fn, inputs)
    finally:
        interpreter_patch.install()
    torch.testing.assert_close(patched[0], stock[0], rtol=0, atol=1e-6)
    for name in stock[1]:
        torch.testing.assert_close(patched[1][name], stock[1][name], rtol=1e-6, atol=1e-6, msg=name)


def _good():
    return make_inputs(4, 2, 4, 6, groups=1)


def _call(**overrides):
    kw = {**_good(), "fold": 2, "reset_every": 6, **overrides}
    return triton_scan.selective_scan_triton(kw.pop("u"), kw.pop("delta"), kw.pop("A"), kw.pop("B"), kw.pop("C"), **kw)


BAD_INPUTS = {
    "u_shape": (dict(u=torch.randn(4, 2)), ValueError, r"\bu\b must have 3 dims"),
    "delta_shape": (dict(delta=torch.rand(4, 2, 5)), ValueError, r"delta must have u's shape"),
    "A_channels": (dict(A=-torch.rand(3, 4)), ValueError, r"A must be \(channels=2"),
    "B_shape": (dict(B=torch.randn(4, 1, 4, 5)), ValueError, r"B must have shape"),
    "C_groups": (dict(C=torch.randn(4, 3, 4, 6)), ValueError, r"C has 3 groups"),
    "D_shape": (dict(D=torch.randn(3)), ValueError, r"D must have shape \(2,\)"),
    "z_dtype": (dict(z=torch.randn(4, 2, 6, dtype=torch.float64)), TypeError, r"z has dtype torch.float64"),
    "delta_bias_int": (dict(delta_bias=torch.ones(2, dtype=torch.int64)), TypeError, r"delta_bias has dtype"),
    "u_noncontiguous": (dict(u=torch.randn(4, 6, 2).transpose(1, 2)), ValueError,
                        r"u must be contiguous along its last dimension"),
    "B_noncontiguous": (dict(B=torch.randn(4, 1, 6, 4).transpose(2, 3)), ValueError,
                        r"B must be contiguous along its last dimension"),
    "device_mismatch": (dict(A=-torch.rand(2, 4, device="meta")), ValueError, r"A is on meta but u is on cpu"),
    "reset_not_dividing": (dict(reset_every=5), ValueError, r"reset_every=5 must divide the folded sequence "
                                                             r"length 12"),
    "reset_not_dividing_last_group": (dict(u=torch.randn(5, 2, 6), delta=torch.rand(5, 2, 6),
                                           B=torch.randn(5, 1, 4, 6), C=torch.randn(5, 1, 4, 6), z=None,
                                           fold=2, reset_every=12), ValueError, r"length 6 \(1 row"),
    "fold_zero": (dict(fold=0), ValueError, r"fold must be a positive int"),
    "reset_zero": (dict(reset_every=0), ValueError, r"reset_every must be a positive int"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_errors_name_the_argument(case):
    overrides, exc, pattern = BAD_INPUTS[case]
    with pytest.raises(exc, match=pattern):
        _call(**overrides)


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        _call()


def test_device_check_cpu_mode_runs(tmp_path):
    """kernels/device_check.py --cpu: the GPU script's correctness path, tiny shapes, interpreter."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'kernels'}", "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, str(REPO / "kernels" / "device_check.py"), "--cpu",
                             "--out-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    report = json.loads(files[0].read_text())
    assert report["mode"] == "cpu-interpreter"
    assert report["correctness"] and all(c["ok"] for c in report["correctness"])
    assert report["timings"] == []  # never a number that was not measured on a GPU
