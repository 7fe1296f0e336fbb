"""Triton selective scan vs the fp64 reference, under the Triton interpreter (CPU).

TRITON_INTERPRET must be set before triton decorates the kernels, hence the first lines. Shapes are
tiny: the interpreter runs every program serially in Python.
"""

import os

_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import sf_mamba_kernels.selective_scan.triton_scan as triton_scan  # noqa: E402
from sf_mamba_kernels.selective_scan import interpreter_patch  # noqa: E402
from sf_mamba_kernels.selective_scan.reference import selective_scan_ref  # noqa: E402
from sf_mamba_kernels.selective_scan.testing import make_scan_inputs, mamba_tolerances, run_with_grads  # noqa: E402

if type(triton_scan._scan_fwd_kernel).__name__ != "InterpretedFunction":
    # imported earlier without TRITON_INTERPRET: decorate the kernels again for the interpreter
    triton_scan = importlib.reload(triton_scan)

pytestmark = pytest.mark.triton



@pytest.fixture(scope="module", autouse=True)
def interpreter():
    os.environ["TRITON_INTERPRET"] = "1"
    interpreter_patch.install()
    yield
    interpreter_patch.uninstall()
    if _INTERPRET_BEFORE is None:  # leave the environment as found for later test modules
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE


def make_inputs(batch, channels, n_state, length, c_groups=None, **options):
    inputs = make_scan_inputs(batch, channels, n_state, length, **options)
    if c_groups:  # C with its own group count (B stays (batch, N, L))
        inputs["C"] = make_scan_inputs(batch, channels, n_state, length, groups=c_groups, seed=99)["C"]
    return inputs


def triton_fn(fold, reset_every, softplus=True, last=False):
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return triton_scan.selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, softplus, last, reset_every,
                                                 fold)
    return fn


def reference_fn(fold, reset_every, softplus=True, last=False):
    """The float64 sequential oracle (it folds physically: rows concatenated along time)."""
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, softplus, last, reset_every, fold)
    return fn


def reference_grads(fold, reset_every, inputs, softplus=True):
    as64 = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    return run_with_grads(reference_fn(fold, reset_every, softplus), as64)


def assert_matches_mamba_tolerances(ref, got, dtype, inputs):
    tol = mamba_tolerances(dtype, inputs["z"] is not None, inputs["B"].dim() > 2, inputs["C"].dim() > 2)
    out_ref, grads_ref = ref
    out, grads = got
    torch.testing.assert_close(out.double(), out_ref.double(), rtol=tol["out"][0], atol=tol["out"][1],
                               msg=lambda m: f"out: {m}")
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        g = grads[name]
        assert g.shape == g_ref.shape, name
        r, a = tol[name]
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=r, atol=a, msg=lambda m, n=name: f"d{n}: {m}")


# (batch, channels, N, L, fold, reset_every, options): each case names what it covers. CHUNK is
# min(8, pow2 <= L, pow2 <= reset_every); the backward works in chunks of min(4, CHUNK) steps.
CASES = {
    # 3 images of 10 in one stream, CHUNK 8: resets at 10 and 20 fall mid-chunk, 39 - 32 = ragged tail
    "reset_mid_chunk_ragged_tail": (4, 3, 8, 10, 3, 10, {}),
    # images of 8 with CHUNK 8: every reset is exactly at a chunk start
    "reset_at_chunk_start": (4, 2, 4, 8, 4, 8, {}),
    # images of 7, CHUNK 4: resets at 7, 14, 21 sit right after a chunk's last step
    "reset_after_chunk_end": (3, 2, 4, 7, 3, 7, {}),
    # k=1, no reset, L=20 is ragged against CHUNK 8; the state crosses chunks
    "k1_no_reset_ragged": (2, 3, 8, 20, 1, None, {}),
    # batch 5, k=2: the last group holds one row; two B/C groups; no z, D, bias or softplus
    "ragged_last_group_groups2_bare": (5, 4, 4, 6, 2, 6, dict(groups=2, has_z=False, has_d=False,
                                                              has_bias=False, softplus=False)),
    # one program walks the whole batch; reset every 2 images
    "reset_every_two_images": (4, 2, 8, 3, 4, 6, {}),
    # T = 1: every token restarts (CHUNK 1)
    "reset_every_token": (2, 2, 4, 4, 2, 1, {}),
    # no reset with k=2: state leaks between folded rows, exactly like the physically folded oracle
    "fold_without_reset_leaks": (4, 2, 4, 5, 2, None, {}),
    # fixed (D, N) B with input-dependent C, and the reverse
    "fixed_b_variable_c": (3, 2, 4, 9, 3, 9, dict(fixed_b=True)),
    "variable_b_fixed_c": (3, 2, 4, 9, 3, 9, dict(fixed_c=True)),
    "fixed_b_and_c": (2, 2, 4, 6, 2, 6, dict(fixed_b=True, fixed_c=True)),
    # B (batch, N, L) shared by all channels, C in 2 groups
    "b_one_group_c_two_groups": (2, 4, 4, 6, 2, 6, dict(c_groups=2)),
    # S4D-real A = -(1..N) with larger delta: decays near 0
    "s4d_decays": (2, 2, 8, 10, 2, 10, dict(s4d=True)),
    # 40 channels: a full 32-channel block and a partial one (channel masks); N=16
    "partial_channel_block": (2, 40, 16, 9, 2, 9, {}),
    # d_state 5 is not a power of 2 (state masks)
    "d_state_not_pow2": (2, 2, 5, 9, 2, 9, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_fp64_reference(case):
    batch, channels, n_state, length, fold, reset_every, opts = CASES[case]
    opts = dict(opts)
    softplus = opts.pop("softplus", True)
    inputs = make_inputs(batch, channels, n_state, length, **opts)
    ref = reference_grads(fold, reset_every, inputs, softplus)
    got = run_with_grads(triton_fn(fold, reset_every, softplus), inputs)
    assert_matches_mamba_tolerances(ref, got, torch.float32, inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_reference(dtype):
    inputs = make_inputs(3, 2, 8, 11, dtype=dtype, groups=1)
    ref = reference_grads(2, 11, inputs)
    got = run_with_grads(triton_fn(2, 11), inputs)
    assert got[0].dtype == dtype and got[1]["u"].dtype == dtype and got[1]["A"].dtype == torch.float32
    assert_matches_mamba_tolerances(ref, got, dtype, inputs)


def test_fold_invariance():
    """fold=k with reset_every=L equals fold=1: outputs, last states and every gradient."""
    length = 10
    inputs = make_inputs(5, 3, 8, length, seed=7)
    base_out, base_grads = run_with_grads(triton_fn(1, None), inputs)
    with torch.no_grad():
        _, base_last = triton_fn(1, None, last=True)(**inputs)
    for fold in (2, 5):  # 2 leaves a ragged last group of one row; 5 = the whole batch in one program
        out, grads = run_with_grads(triton_fn(fold, length), inputs)
        torch.testing.assert_close(out, base_out, rtol=1e-5, atol=1e-5)
        for name in base_grads:
            torch.testing.assert_close(grads[name], base_grads[name], rtol=1e-5, atol=1e-5, msg=name)
        with torch.no_grad():
            _, last = triton_fn(fold, length, last=True)(**inputs)
        torch.testing.assert_close(last, base_last, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # teeth: without the reset the folded rows leak state into each other
        leaked = triton_fn(2, None)(**inputs)
    assert (leaked - base_out).abs().max() > 1e-2


def test_return_last_state_matches_reference():
    """Each row's state after its last token, fold 1 and a ragged fold 2 with resets."""
    inputs = make_inputs(3, 2, 4, 9, seed=4)
    as64 = {k: v.double() for k, v in inputs.items()}
    for fold, reset in ((1, None), (2, 9)):
        with torch.no_grad():
            out, last = triton_fn(fold, reset, last=True)(**inputs)
            ref_out, ref_last = reference_fn(fold, reset, last=True)(**as64)
        assert last.shape == (3, 2, 4) and last.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref_out, rtol=6e-4, atol=2e-3)
        torch.testing.assert_close(last.double(), ref_last, rtol=6e-4, atol=2e-3)


def test_non_finite_state_does_not_cross_an_image_in_a_fold_group():
    """An Inf in image 0 (forward) or a NaN gradient in image 1 (backward) stays in its image."""
    length = 10  # CHUNK 8: the image boundary at 10 is inside a chunk
    inputs = make_inputs(2, 2, 4, length, seed=9)
    inputs["u"][0, :, 6] = float("inf")  # image 0's state becomes Inf/NaN from t=6 on
    base_out = triton_fn(1, None)(**inputs).detach()
    assert not torch.isfinite(base_out[0]).all() and torch.isfinite(base_out[1]).all()
    folded_out = triton_fn(2, length)(**inputs).detach()
    torch.testing.assert_close(folded_out[1], base_out[1], rtol=1e-5, atol=1e-5)

    clean = make_inputs(2, 2, 4, length, seed=9)
    dout = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(3))
    dout[1, :, 4] = float("nan")  # image 1's adjoint becomes NaN for its t <= 4

    def grads(fold, reset):
        leaves = {k: v.clone().requires_grad_() for k, v in clean.items()}
        triton_fn(fold, reset)(**leaves).backward(dout)
        return leaves

    base, folded = grads(1, None), grads(2, length)
    for name in ("u", "delta", "z"):
        assert torch.isfinite(base[name].grad[0]).all(), name
        torch.testing.assert_close(folded[name].grad[0], base[name].grad[0], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(folded["B"].grad[0], base["B"].grad[0], rtol=1e-5, atol=1e-5)


def test_model_views_are_read_in_place(monkeypatch):
    """The model's time-major (B, L, D) projections seen as (B, D, L) views: no copies, same result."""
    batch, length, channels, n_state, rank = 3, 9, 4, 4, 2
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(batch, length, channels, generator=gen)
    dt = 0.5 * torch.rand(batch, length, channels, generator=gen)
    x_dbl = torch.randn(batch, length, rank + 2 * n_state, generator=gen)
    u, delta = x.transpose(1, 2), dt.transpose(1, 2)
    B = x_dbl[..., rank:rank + n_state].transpose(1, 2)
    C = x_dbl[..., rank + n_state:].transpose(1, 2)
    A, D, bias = -0.5 * torch.rand(channels, n_state, generator=gen), torch.randn(channels), torch.rand(channels)
    assert u.stride(-1) != 1 and B.stride(-1) != 1
    expected = triton_fn(3, length)(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), D, None,
                                    bias)

    seen = {}
    real_kernel = triton_scan._scan_fwd_kernel

    class Spy:  # records the tensors the launch receives
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen["ptrs"] = [a.data_ptr() for a in args[:5]]
                return real_kernel[grid](*args, **kwargs)
            return launch

    def no_copy(self, *args, **kwargs):
        raise AssertionError("the Triton scan copied an input")

    monkeypatch.setattr(triton_scan, "_scan_fwd_kernel", Spy())
    monkeypatch.setattr(torch.Tensor, "contiguous", no_copy)
    monkeypatch.setattr(torch.Tensor, "clone", no_copy)
    out = triton_fn(3, length)(u, delta, A, B, C, D, None, bias)
    monkeypatch.undo()
    assert seen["ptrs"] == [t.data_ptr() for t in (u, delta, A, B, C)]
    assert out.stride(1) == 1  # written time-major like u: the model's transpose back is free
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_launch_config_keeps_chunks_inside_rows_and_segments():
    cfg = triton_scan.launch_config(198, 8, 160, 198)
    assert (cfg["CHUNK"], cfg["CKPT"], cfg["BLOCK_D"], cfg["num_warps"], cfg["EVEN_D"]) == (8, 4, 32, 1, True)
    assert triton_scan.launch_config(5, 8, 160, None)["CHUNK"] == 4
    assert triton_scan.launch_config(49, 8, 40, 3)["CHUNK"] == 2
    assert triton_scan.launch_config(49, 16, 6, None)["BLOCK_D"] == 8
    assert not triton_scan.launch_config(49, 16, 40, None)["EVEN_D"]


# 32-channel blocks: the backward sums dB/dC over lanes with the reduce-scatter (LANE_REDUCE);
# V = N * (backward chunk) values per lane: exactly 32, fewer (lanes share an index) and more.
LANE_CASES = {
    "v32_reset_mid_chunk": (2, 32, 8, 12, 2, 12, {}),
    "v16_two_groups_ragged": (3, 64, 4, 6, 2, 6, dict(groups=2)),
    "v8_backward_chunk_2": (2, 32, 4, 2, 2, 2, {}),
    "v64_masked_states": (2, 48, 9, 9, 2, 9, {}),
    "v32_fixed_c_no_reset": (2, 32, 8, 10, 1, None, dict(fixed_c=True)),
}


@pytest.mark.parametrize("lane_reduce", ["1", "0"])
@pytest.mark.parametrize("case", list(LANE_CASES))
def test_lane_reduce_scatter_matches_reference(case, lane_reduce, monkeypatch):
    monkeypatch.setenv(triton_scan.LANE_REDUCE_ENV, lane_reduce)
    batch, channels, n_state, length, fold, reset_every, opts = LANE_CASES[case]
    cfg = triton_scan.launch_config(length, n_state, channels // opts.get("groups", 1), reset_every)
    assert cfg["BLOCK_D"] == 32  # else the case would not reach the reduce-scatter
    inputs = make_inputs(batch, channels, n_state, length, seed=11, **opts)
    ref = reference_grads(fold, reset_every, inputs)
    got = run_with_grads(triton_fn(fold, reset_every), inputs)
    assert_matches_mamba_tolerances(ref, got, torch.float32, inputs)


def test_backward_picks_the_lane_reduce_for_full_warps(monkeypatch):
    """The launcher asks for the reduce-scatter exactly when a program's channels fill a warp."""
    seen = []
    real_kernel = triton_scan._scan_bwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append((kwargs["BLOCK_D"], kwargs["LANE_REDUCE"], kwargs["CHANNEL_UNIT"]))
                return real_kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(triton_scan, "_scan_bwd_kernel", Spy())
    for channels in (32, 8):
        inputs = make_inputs(2, channels, 4, 4, seed=1)
        run_with_grads(triton_fn(1, None), inputs)
        views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "z") else v)
                 for k, v in inputs.items()}
        run_with_grads(triton_fn(1, None), views)
    monkeypatch.setenv(triton_scan.LANE_REDUCE_ENV, "0")
    run_with_grads(triton_fn(1, None), make_inputs(2, 32, 4, 4, seed=1))
    # channel-unit bits (u, delta, z, dout, du, ddelta, dz): the views make all but dout unit-stride
    views = 1 + 2 + 4 + 16 + 32 + 64
    assert seen == [(32, True, 0), (32, True, views), (8, False, 0), (8, False, views), (32, False, 0)]


@pytest.mark.parametrize("case", ["reset_mid_chunk_ragged_tail", "k1_no_reset_ragged", "fixed_b_variable_c",
                                  "partial_channel_block", "reset_every_token", "fold_without_reset_leaks"])
def test_prefetching_forward_matches_reference(case, monkeypatch):
    """SF_MAMBA_SCAN_PREFETCH=1: chunk i+1 is loaded while chunk i is computed (the last iteration
    reloads its own chunk); ragged tails, CHUNK 1, resets and leaks must not notice."""
    monkeypatch.setenv(triton_scan.PREFETCH_ENV, "1")
    test_matches_fp64_reference(case)


def test_prefetch_is_opt_in_until_a_gpu_times_it(monkeypatch):
    monkeypatch.delenv(triton_scan.PREFETCH_ENV, raising=False)
    assert not triton_scan.prefetch_enabled()
    monkeypatch.setenv(triton_scan.PREFETCH_ENV, "1")
    assert triton_scan.prefetch_enabled()


@pytest.mark.parametrize("prefetch", ["1", "0"])
def test_model_layout_forward_matches_reference(prefetch, monkeypatch):
    """The model's time-major views take the FLAT offsets (one pointer per chunk, token-indexed), with
    and without the prefetch: 3 rows of 10 in one fold group, resets mid-chunk, a ragged tail."""
    monkeypatch.setenv(triton_scan.PREFETCH_ENV, prefetch)
    inputs = make_scan_inputs(3, 4, 8, 10, seed=12, layout="model")
    assert triton_scan._flat_rows([inputs["u"], inputs["delta"], inputs["z"]], [inputs["B"], inputs["C"]])
    ref = reference_grads(3, 10, inputs)
    got = run_with_grads(triton_fn(3, 10), inputs)
    assert_matches_mamba_tolerances(ref, got, torch.float32, inputs)
