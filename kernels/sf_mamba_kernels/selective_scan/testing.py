"""The one generator of selective-scan inputs (tests, benchmarks, the device check, the LUT build)
and the comparison with mamba_ssm's tolerances.

Input law of mamba_ssm's tests/ops/test_selective_scan.py (shared notes, kernels.md §1.5):
A = -0.5·rand, delta = 0.5·rand, delta_bias = 0.5·rand, u/B/C/z/D ~ randn. ``s4d=True`` instead uses
S4D-real A = -(1..N) with delta = 2·rand, which exercises decays near 0.
"""

from __future__ import annotations

import torch

SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# mamba_ssm's tolerances (rtol, atol) by input dtype; weights (A, D, delta_bias, fixed B/C) use
# (1e-3, 1e-3), raised to (rtol, atol) when z is present.
MAMBA_TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2),
                    torch.float64: (1e-9, 1e-9)}


def make_scan_inputs(batch=2, channels=4, d_state=8, length=16, *, groups=None, fixed_b=False, fixed_c=False,
                     dtype=torch.float32, has_z=True, has_d=True, has_bias=True, s4d=False, seed=0,
                     device="cpu", requires_grad=False, layout="contiguous") -> dict:
    """Keyword arguments for :func:`selective_scan_fn` (keys :data:`SCAN_ARGS`; absent parts None).

    u, delta, z and input-dependent B/C are in ``dtype``; A, D, delta_bias and fixed B/C are fp32
    (fp64 when ``dtype`` is fp64), as in mamba_ssm. ``groups=None`` gives (batch, N, L) B/C, an int
    G gives (batch, G, N, L). On a CUDA device the numbers are drawn there (big shapes are many MB).
    ``layout='model'`` gives the same numbers laid out as the model passes them: u, delta, z as
    (batch, channels, L) views of time-major (batch, L, channels) storage (channel stride 1), and
    variable B/C as views of one time-major (batch, L, 2N) tensor (no groups only).
    """
    if layout not in ("contiguous", "model"):
        raise ValueError(f"layout must be 'contiguous' or 'model', got {layout!r}")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape, to=dtype):
        return torch.randn(*shape, generator=gen, device=device, dtype=weight_dtype).to(to)

    def rand(*shape, scale, to=dtype):
        return (scale * torch.rand(*shape, generator=gen, device=device, dtype=weight_dtype)).to(to)

    if s4d:
        A = -torch.arange(1, d_state + 1, device=device, dtype=weight_dtype).repeat(channels, 1)
        delta = rand(batch, channels, length, scale=2.0)
    else:
        A = -rand(channels, d_state, scale=0.5, to=weight_dtype)
        delta = rand(batch, channels, length, scale=0.5)
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    inputs = dict(
        u=randn(batch, channels, length), delta=delta, A=A,
        B=randn(channels, d_state, to=weight_dtype) if fixed_b else randn(*bc_shape),
        C=randn(channels, d_state, to=weight_dtype) if fixed_c else randn(*bc_shape),
        D=randn(channels, to=weight_dtype) if has_d else None,
        z=randn(batch, channels, length) if has_z else None,
        delta_bias=rand(channels, scale=0.5, to=weight_dtype) if has_bias else None,
    )
    if layout == "model":
        for name in ("u", "delta", "z"):
            if inputs[name] is not None:
                inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
        if groups is None and not fixed_b and not fixed_c:
            bc = torch.cat([inputs["B"].transpose(1, 2), inputs["C"].transpose(1, 2)], dim=-1)
            inputs["B"], inputs["C"] = bc[..., :d_state].transpose(1, 2), bc[..., d_state:].transpose(1, 2)
    if requires_grad:
        for value in inputs.values():
            if value is not None:
                value.requires_grad_(True)
    return inputs


def run_with_grads(fn, inputs: dict, seed: int = 1):
    """``fn(**inputs)`` on fresh leaves, backward of a random upstream gradient drawn from ``seed``;
    returns (out, {name: grad}) for the inputs that are not None (zeros where autograd gives None:
    e.g. A with a reset at every step)."""
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    out = fn(**leaves)
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    out.backward(dout)
    return out.detach(), gradients(leaves)


def gradients(leaves: dict) -> dict:
    """{name: grad} of the leaves that are not None; an unreached leaf's gradient is zeros."""
    return {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in leaves.items() if v is not None}


def mamba_tolerances(dtype, has_z: bool, variable_b: bool = True, variable_c: bool = True) -> dict:
    """(rtol, atol) per output name as in mamba_ssm's test: out/last_state (rtol, atol), du x2,
    ddelta x5/x10, dA (rtolw, 5 atolw), dB/dC (rtol, atol) if variable else weights, dD/dz/dbias weights."""
    rtol, atol = MAMBA_TOLERANCES[dtype]
    rtolw, atolw = (1e-3, 1e-3)
    if has_z:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    return {"out": (rtol, atol), "last_state": (rtol, atol), "u": (2 * rtol, 2 * atol),
            "delta": (5 * rtol, 10 * atol), "A": (rtolw, 5 * atolw),
            "B": (rtol, atol) if variable_b else (rtolw, atolw), "C": (rtol, atol) if variable_c else (rtolw, atolw),
            "D": (rtolw, atolw), "z": (rtolw, atolw), "delta_bias": (rtolw, atolw)}


def worst_excess(got: dict, ref: dict, tolerances: dict) -> dict:
    """max(|got - ref| - atol - rtol·|ref|) per name: <= 0 everywhere means allclose passes."""
    worst = {}
    for name, expected in ref.items():
        rtol, atol = tolerances[name]
        diff = (got[name].double() - expected.double()).abs() - atol - rtol * expected.double().abs()
        worst[name] = float(diff.max()) if diff.numel() else 0.0
    return worst
