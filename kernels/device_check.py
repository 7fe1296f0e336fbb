#!/usr/bin/env python
"""One prepared GPU check of the SF-Mamba kernels: correctness, timings, fold LUT, model throughput.

Run from the source tree (no install needed)::

    PYTHONPATH=.:kernels python kernels/device_check.py --out-dir results/device          # GPU, <= ~6 min
    PYTHONPATH=.:kernels python kernels/device_check.py --cpu --out-dir /tmp/dc           # interpreter, seconds

GPU mode, in order (a deadline, ``--budget-s``, skips what does not fit and says so in the JSON):

1. correctness: ``associative_scan(reverse=True)`` against the suffix recurrence for every tile shape
   the kernels use (triton issue #4362); Triton vs the fp32 sequential reference for outputs and all
   8 gradients with mamba_ssm's tolerances (fp32/fp16/bf16, z/D/bias on and off, groups, ragged
   fold groups, resets at tile start/end/mid-tile, T=1), the backward with both reverse modes, fold
   invariance, the 'auto' backend choice, mamba_ssm's CUDA scan when installed, atomics spread;
2. the fold LUT (``sf_mamba.ops.lut.measure_entries``), written to ``--lut-out``;
3. forward timings (``triton.testing.do_bench`` medians) of the torch path, Triton k=1 and Triton
   k=LUT over L x batch x T/S/B SSM widths x dtypes, with GB/s, exp2/s and the fraction of the
   roofline floor max(bytes / HBM peak, exp2 / MUFU peak) (docs/kernels.md, "Roofline");
   forward+backward for a batch-128 bf16 subset;
4. model throughput: timm ``sf_mamba_t`` (scan uni/swap x fold 1/auto, backend triton), batch 128,
   224 px, fp16 autocast, channels_last, synchronised.

Writes ``<out-dir>/<gpu>.json`` and prints a short table. Every number in it was measured in this
run; peaks used for the roofline are labelled as spec assumptions. ``--cpu`` runs the correctness
part at the smallest shapes under ``TRITON_INTERPRET=1`` (no timings) so the script cannot rot.
Keep it working on torch >= 2.4 / triton >= 3.0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

if "--cpu" in sys.argv:  # must precede the first triton import
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "kernels"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from sf_mamba_kernels.selective_scan import triton_scan  # noqa: E402
from sf_mamba_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402

TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# SSM widths = half the stage width; stage 3 and stage 4 of T, S, B.
SSM_WIDTHS = {"T": (160, 320), "S": (192, 384), "B": (256, 512)}
# Spec peaks for the roofline floor (assumptions, not measurements): HBM bytes/s by GPU name,
# MUFU exp2 = 16 per clock per SM at the boost clock below.
HBM_PEAK = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}
BOOST_CLOCK_HZ = {"H200": 1.98e9, "H100": 1.98e9, "A100": 1.41e9}


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(batch, channels, n_state, length, dtype, device, *, groups=None, has_z=True, has_d=True,
                has_bias=True, s4d=False, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    if s4d:
        A = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1)
        delta = 2.0 * rand(batch, channels, length)
    else:
        A, delta = -0.5 * rand(channels, n_state), 0.5 * rand(batch, channels, length)
    bc_shape = (batch, groups, n_state, length) if groups else (batch, n_state, length)
    inputs = dict(u=randn(batch, channels, length).to(dtype), delta=delta.to(dtype), A=A,
                  B=randn(*bc_shape).to(dtype), C=randn(*bc_shape).to(dtype),
                  D=randn(channels) if has_d else None,
                  z=randn(batch, channels, length).to(dtype) if has_z else None,
                  delta_bias=0.5 * rand(channels) if has_bias else None)
    return {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}


def physical_fold(x, k):
    """(batch, ..., L) -> (batch/k, ..., k*L); batch must be a multiple of k."""
    batch, inner, length = x.shape[0], x.shape[1:-1], x.shape[-1]
    return x.reshape(batch // k, k, *inner, length).movedim(1, -2).reshape(batch // k, *inner, k * length)


def reference_folded(u, delta, A, B, C, D, z, delta_bias, fold, reset_every):
    """fp32 sequential oracle with physical folding (ragged last group handled separately)."""
    batch = u.shape[0]
    k = min(fold, batch)
    outs = []
    for start in range(0, batch, k):
        rows = slice(start, min(start + k, batch))
        n = rows.stop - rows.start

        def part(x):
            return None if x is None else physical_fold(x[rows], n)

        out = selective_scan_reference(part(u), part(delta), A, part(B), part(C), D=D, z=part(z),
                                       delta_bias=delta_bias, delta_softplus=True, reset_every=reset_every)
        length = u.shape[-1]
        outs.append(out.reshape(1, u.shape[1], n, length).movedim(2, 1).reshape(n, u.shape[1], length))
    return torch.cat(outs, 0)


def forward_backward(fn, inputs, seed=1):
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = fn(**leaves)
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
    out.backward(dout)
    return out.detach(), {k: v.grad.detach() for k, v in leaves.items() if v is not None}


def max_violation(got, ref, rtol, atol):
    """max(|got-ref| - atol - rtol*|ref|): <= 0 means allclose passes."""
    got, ref = got.float(), ref.float()
    return float(((got - ref).abs() - atol - rtol * ref.abs()).max())


def compare(ref, got, dtype, has_z):
    rtol, atol = TOLERANCES[dtype]
    rtolw, atolw = (max(1e-3, rtol), max(1e-3, atol)) if has_z else (1e-3, 1e-3)
    per = {"out": (rtol, atol), "u": (2 * rtol, 2 * atol), "delta": (5 * rtol, 10 * atol), "A": (rtolw, 5 * atolw),
           "B": (rtol, atol), "C": (rtol, atol), "D": (rtolw, atolw), "z": (rtolw, atolw),
           "delta_bias": (rtolw, atolw)}
    worst = {"out": max_violation(got[0], ref[0], *per["out"])}
    for name in ref[1]:
        worst[name] = max_violation(got[1][name], ref[1][name], *per[name])
    return all(v <= 0 for v in worst.values()), {k: round(v, 6) for k, v in worst.items()}


# ---------------------------------------------------------------------------------------------- checks


def check_reverse_probe(device, tiles):
    rows = []
    for block_n, block_t in tiles:
        gen = torch.Generator().manual_seed(0)
        a = torch.rand(block_n, block_t, generator=gen).to(device)
        b = torch.randn(block_n, block_t, generator=gen).to(device)
        out = torch.empty_like(b)
        triton_scan._reverse_probe_kernel[(1,)](a, b, out, BLOCK_N=block_n, BLOCK_T=block_t,
                                                num_warps=triton_scan.num_warps_for(block_n, block_t))
        expected = triton_scan.suffix_recurrence(a.double(), b.double()).float()
        err = float((out - expected).abs().max())
        rows.append({"check": f"reverse=True suffix recurrence [{block_n}x{block_t}]", "ok": err < 1e-4,
                     "max_abs_err": err})
    return rows


def scan_cases(cpu):
    """(name, batch, channels, N, L, fold, reset_every, block_t, dtype, options)."""
    if cpu:
        return [
            ("fp32 reset mid-tile+tile-end, k=4", 4, 2, 4, 5, 4, 5, 16, torch.float32, {}),
            ("bf16 ragged group, groups=2", 3, 2, 4, 6, 2, 6, 16, torch.bfloat16, dict(groups=2)),
        ]
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        cases += [
            (f"{tag} L=49 k=5 N=8", 10, 16, 8, 49, 5, 49, None, dtype, {}),
            (f"{tag} L=197 k=3 ragged N=16 groups=2", 7, 8, 16, 197, 3, 197, None, dtype, dict(groups=2)),
            (f"{tag} L=8 k=4 reset at tile start", 8, 4, 8, 8, 4, 8, 16, dtype, {}),
            (f"{tag} L=5 k=4 reset at tile end", 8, 4, 8, 5, 4, 5, 16, dtype, {}),
        ]
    for block_d in (1, 2, 8):
        cases.append((f"fp32 L=49 k=3 block_d={block_d}", 7, 16, 4, 49, 3, 49, None, torch.float32,
                      dict(block_d=block_d)))
    cases += [
        ("fp32 bare (no z/D/bias)", 6, 8, 8, 49, 2, 49, None, torch.float32,
         dict(has_z=False, has_d=False, has_bias=False)),
        ("fp32 T=1", 4, 4, 8, 6, 2, 1, 16, torch.float32, {}),
        ("fp32 s4d decays", 4, 4, 16, 49, 4, 49, None, torch.float32, dict(s4d=True)),
        ("fp32 k=1 L=1000 multi-tile", 2, 4, 8, 1000, 1, 1000, None, torch.float32, {}),
    ]
    return cases


def check_scan_cases(device, cpu):
    rows = []
    for name, batch, channels, n_state, length, fold, reset_every, block_t, dtype, opts in scan_cases(cpu):
        opts = dict(opts)
        block_d = opts.pop("block_d", None)
        inputs = make_inputs(batch, channels, n_state, length, dtype, device, **opts)

        def ref_fn(**kw):
            return reference_folded(**kw, fold=fold, reset_every=reset_every)

        def tri_fn(u, delta, A, B, C, D, z, delta_bias):
            return triton_scan.selective_scan_triton(u, delta, A, B, C, z=z, fold=fold, D=D, delta_bias=delta_bias,
                                                     reset_every=reset_every, block_t=block_t, block_d=block_d)

        ref = forward_backward(ref_fn, inputs)
        for mode in ("native", "flip"):
            os.environ["SF_MAMBA_SCAN_REVERSE"] = mode
            try:
                got = forward_backward(tri_fn, inputs)
            finally:
                os.environ.pop("SF_MAMBA_SCAN_REVERSE", None)
            ok, worst = compare(ref, got, dtype, inputs["z"] is not None)
            rows.append({"check": f"triton vs reference: {name} (reverse={mode})", "ok": ok, "worst_excess": worst})
            if cpu:
                break
    return rows


def check_fold_invariance(device, cpu):
    batch, length = (5, 6) if cpu else (13, 49)
    inputs = make_inputs(batch, 2 if cpu else 16, 4 if cpu else 8, length, torch.float32, device, seed=4)

    def fn(fold):
        def run(u, delta, A, B, C, D, z, delta_bias):
            return triton_scan.selective_scan_triton(u, delta, A, B, C, z=z, fold=fold, D=D, delta_bias=delta_bias,
                                                     reset_every=length)
        return run

    base = forward_backward(fn(1), inputs)
    rows = []
    for k in ((2, 5) if cpu else (2, 4, 5, 13)):
        got = forward_backward(fn(k), inputs)
        err = max([float((got[0] - base[0]).abs().max())]
                  + [float((got[1][n] - base[1][n]).abs().max() / (base[1][n].abs().max() + 1e-12))
                     for n in base[1]])
        rows.append({"check": f"fold invariance k={k} vs k=1 (out abs, grads rel)", "ok": err < 1e-4, "max_err": err})
    return rows


def check_backend_and_mamba(device):
    rows = []
    from sf_mamba.ops.selective_scan import resolve_backend
    picked = resolve_backend("auto", device)
    rows.append({"check": "backend 'auto' on this device", "ok": picked == ("triton" if device.type == "cuda"
                                                                         else "torch"), "picked": picked})
    if device.type != "cuda":
        return rows
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # optional dependency
        rows.append({"check": "mamba_ssm selective_scan_fn (no reset, k=1)", "ok": True,
                     "skipped": f"mamba_ssm not importable: {type(err).__name__}"})
    else:
        inputs = make_inputs(4, 16, 8, 197, torch.bfloat16, device, seed=2)
        ours = triton_scan.selective_scan_triton(**inputs, reset_every=None)
        theirs = selective_scan_fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                                   inputs["z"], inputs["delta_bias"], delta_softplus=True)
        err = max_violation(ours, theirs, *TOLERANCES[torch.bfloat16])
        rows.append({"check": "mamba_ssm selective_scan_fn vs ours (no reset, k=1, bf16)", "ok": err <= 0,
                     "worst_excess": err})
    # atomics: dB/dC accumulate in nondeterministic order; report the spread of two backward runs
    inputs = make_inputs(32, 160, 8, 198, torch.float32, device, seed=3)
    runs = [forward_backward(lambda **kw: triton_scan.selective_scan_triton(**kw, fold=4, reset_every=198),
                             inputs)[1] for _ in range(2)]
    spread = max(float((runs[0][n] - runs[1][n]).abs().max()) for n in ("B", "C"))
    rows.append({"check": "dB/dC run-to-run spread (fp32 atomics, informational)", "ok": True,
                 "max_abs_diff": spread})
    return rows


def check_model_cpu():
    """Smallest model, one forward with the Triton backend under the interpreter (if it exists yet)."""
    try:
        import timm

        import sf_mamba.models  # noqa: F401  (registers the variants with timm)
        model = timm.create_model("sf_mamba_micro", backend="triton", fold=2).eval()
    except Exception as err:
        return {"check": "model sf_mamba_micro forward (triton backend)", "ok": True,
                "skipped": f"model not available: {type(err).__name__}: {err}"[:300]}
    try:
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
    except Exception as err:  # the model exists but does not run on the Triton path: a real failure
        return {"check": "model sf_mamba_micro forward (triton backend)", "ok": False,
                "error": f"{type(err).__name__}: {err}"[:300], "traceback": traceback.format_exc()[-2000:]}
    return {"check": "model sf_mamba_micro forward (triton backend)", "ok": bool(torch.isfinite(out).all()),
            "out_shape": list(out.shape)}


# ---------------------------------------------------------------------------------------------- timing


def roofline_floor_s(batch, channels, length, n_state, dtype, gpu_name, sm_count, has_z=False):
    """Forward lower bound max(bytes / HBM peak, exp2 / MUFU peak) and its inputs (spec peaks)."""
    size = torch.tensor([], dtype=dtype).element_size()
    n_bytes = batch * length * (channels * (3 + has_z) * size + 2 * n_state * size)
    n_exp = batch * channels * length * n_state
    hbm = next((v for k, v in HBM_PEAK.items() if k in gpu_name), None)
    clock = next((v for k, v in BOOST_CLOCK_HZ.items() if k in gpu_name), None)
    mufu = 16 * sm_count * clock if clock else None
    parts = [n_bytes / hbm if hbm else None, n_exp / mufu if mufu else None]
    floor = max(p for p in parts if p is not None) if any(p is not None for p in parts) else None
    return floor, n_bytes, n_exp


def graph_median_ms(fn, rep):
    """Median ms of ``fn`` replayed from a CUDA graph (no Python/launch overhead); None if unavailable.

    Stage-4 scans take single-digit microseconds, less than a Python launch: without graphs the
    k=1 vs k=LUT ratio is compressed towards 1. ``fn`` must have run once (compiled) before.
    """
    import inspect

    import triton.testing

    bench = getattr(triton.testing, "do_bench_cudagraph", None)
    if bench is None:
        return None
    params = inspect.signature(bench).parameters
    kwargs = {"rep": rep}
    if "return_mode" in params:
        kwargs["return_mode"] = "median"
    try:
        result = bench(fn, **kwargs)
    except Exception:
        return None
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def run_timings(device, args, deadline, log, rows=None):
    """Forward timings per shape, appended to ``rows`` as they are measured (partial results survive)."""
    from sf_mamba.ops import lut
    from sf_mamba.ops.selective_scan import selective_scan

    gpu = torch.cuda.get_device_name(device)
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    rows = [] if rows is None else rows
    skipped = 0
    seq_lens = [int(v) for v in args.seq_lens.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        for length in seq_lens:
            for model_size, widths in SSM_WIDTHS.items():
                for channels in widths:
                    for batch in batches:
                        if time.monotonic() > deadline:
                            skipped += 1
                            continue
                        u, delta, A, B, C, D, bias = lut.scan_inputs(batch, length, channels, dtype, device)
                        k = lut.lookup_fold(batch, length, channels, dtype, device)

                        def triton_call(fold):
                            def call():
                                with torch.no_grad():
                                    triton_scan.selective_scan_triton(u, delta, A, B, C, D=D, delta_bias=bias,
                                                                      reset_every=length, fold=fold)
                            return call

                        def torch_call():
                            with torch.no_grad():
                                selective_scan(u, delta, A, B, C, D=D, delta_bias=bias, reset_every=length,
                                               backend="torch")

                        t_torch = lut.median_ms(torch_call, warmup=3, rep=args.rep_ms)
                        t_k1 = lut.median_ms(triton_call(1), warmup=3, rep=args.rep_ms)
                        t_k = t_k1 if k == 1 else lut.median_ms(triton_call(k), warmup=3, rep=args.rep_ms)
                        g_k1 = graph_median_ms(triton_call(1), args.rep_ms)
                        g_k = g_k1 if k == 1 else graph_median_ms(triton_call(k), args.rep_ms)
                        floor, n_bytes, n_exp = roofline_floor_s(batch, channels, length, 8, dtype, gpu, sm_count)
                        row = {"dtype": dtype_name, "L": length, "batch": batch, "channels": channels,
                               "model": f"{model_size}-stage{3 if channels == widths[0] else 4}",
                               "torch_ms": round(t_torch, 5), "triton_k1_ms": round(t_k1, 5), "k_lut": k,
                               "triton_klut_ms": round(t_k, 5), "fold_speedup": round(t_k1 / t_k, 3),
                               "graph_k1_ms": round(g_k1, 5) if g_k1 else None,
                               "graph_klut_ms": round(g_k, 5) if g_k else None,
                               "fold_speedup_graph": round(g_k1 / g_k, 3) if g_k1 and g_k else None,
                               "roofline_frac_graph": round(floor * 1e3 / g_k, 3) if floor and g_k else None,
                               "bytes": n_bytes, "exp2": n_exp,
                               "GBps_klut": round(n_bytes / (t_k * 1e-3) / 1e9, 1),
                               "exp2_per_s_klut": float(f"{n_exp / (t_k * 1e-3):.4g}"),
                               "roofline_floor_ms": round(floor * 1e3, 5) if floor else None,
                               "roofline_frac_klut": round(floor * 1e3 / t_k, 3) if floor else None}
                        rows.append(row)
                        log(f"{dtype_name:>8} L={length:<4} D={channels:<4} B={batch:<4} torch {t_torch:8.4f} "
                            f"k1 {t_k1:8.4f} k={k:<2} {t_k:8.4f} ms  x{t_k1 / t_k:4.2f}  "
                            f"roof {row['roofline_frac_klut']}  graph x{row['fold_speedup_graph']} "
                            f"roof {row['roofline_frac_graph']}")
    return rows, skipped


def run_fwdbwd_timings(device, args, deadline):
    from sf_mamba.ops import lut

    rows = []
    for length in [int(v) for v in args.seq_lens.split(",")]:
        for channels in (160, 320):
            if time.monotonic() > deadline:
                return rows
            k = lut.lookup_fold(128, length, channels, torch.bfloat16, device)
            t = {fold: lut.time_fold(lut.scan_inputs(128, length, channels, torch.bfloat16, device), length, fold,
                                     mode="fwdbwd", warmup=3, rep=args.rep_ms) for fold in sorted({1, k})}
            rows.append({"dtype": "bfloat16", "L": length, "batch": 128, "channels": channels, "k_lut": k,
                         "fwdbwd_k1_ms": round(t[1], 5), "fwdbwd_klut_ms": round(t[k], 5),
                         "fold_speedup": round(t[1] / t[k], 3)})
    return rows


def run_block_d_sweep(device, args, deadline, log):
    """Forward ms per channels-per-program (BLOCK_D) at batch 128 bf16, k=1 and k=LUT: tuning data."""
    from sf_mamba.ops import lut

    rows = []
    for length in (49, 196):
        for channels in (160, 320):
            if time.monotonic() > deadline:
                return rows
            u, delta, A, B, C, D, bias = lut.scan_inputs(128, length, channels, torch.bfloat16, device)
            k = lut.lookup_fold(128, length, channels, torch.bfloat16, device)
            for fold in sorted({1, k}):
                for block_d in (1, 2, 4, 8):
                    def call():
                        with torch.no_grad():
                            triton_scan.selective_scan_triton(u, delta, A, B, C, D=D, delta_bias=bias,
                                                              reset_every=length, fold=fold, block_d=block_d)
                    ms = lut.median_ms(call, warmup=3, rep=args.rep_ms)
                    rows.append({"dtype": "bfloat16", "L": length, "batch": 128, "channels": channels, "fold": fold,
                                 "block_d": block_d, "ms": round(ms, 5)})
            log(f"block_d sweep L={length} D={channels}: " + ", ".join(
                f"k={r['fold']} bd={r['block_d']} {r['ms']:.4f}" for r in rows[-(4 * len({1, k})):]))
    return rows


def run_model(device, deadline, log):
    rows = []
    try:
        import timm

        import sf_mamba.models  # noqa: F401
    except Exception as err:
        return [{"skipped": f"model not importable: {type(err).__name__}: {err}"[:300]}]
    for scan in ("uni", "swap"):
        for fold in (1, "auto"):
            if time.monotonic() > deadline:
                rows.append({"scan": scan, "fold": fold, "skipped": "time budget"})
                continue
            try:
                model = timm.create_model("sf_mamba_t", scan=scan, fold=fold, backend="triton")
                model = model.to(device).eval().to(memory_format=torch.channels_last)
                x = torch.randn(128, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                    for _ in range(5):
                        model(x)
                    torch.cuda.synchronize(device)
                    iters, start = 20, time.perf_counter()
                    for _ in range(iters):
                        model(x)
                    torch.cuda.synchronize(device)
                    elapsed = time.perf_counter() - start
                rows.append({"scan": scan, "fold": fold, "batch": 128, "img_per_s": round(128 * iters / elapsed, 1)})
                log(f"model sf_mamba_t scan={scan} fold={fold}: {rows[-1]['img_per_s']} img/s")
                del model
            except Exception as err:
                rows.append({"scan": scan, "fold": fold, "error": f"{type(err).__name__}: {err}"[:300]})
    return rows


# ---------------------------------------------------------------------------------------------- main


def slug(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="interpreter, smallest shapes, no timings")
    parser.add_argument("--out-dir", default=str(REPO / "results" / "device"))
    parser.add_argument("--lut-out", default=None, help="fold LUT to update (default: the package table)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip remaining work after this")
    parser.add_argument("--seq-lens", default="49,196,199", help="timing lengths (199 = 197 + 2 aux)")
    parser.add_argument("--batches", default="32,128,256")
    parser.add_argument("--dtypes", default="float16,bfloat16,float32")
    parser.add_argument("--lut-batches", default="1,8,32,128,256")
    parser.add_argument("--rep-ms", type=int, default=20)
    parser.add_argument("--lut-budget-s", type=float, default=170.0,
                        help="stop the LUT sweep this many seconds after the start")
    parser.add_argument("--skip-lut", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s

    def log(msg):
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", flush=True)

    import triton

    report = {"mode": "cpu-interpreter" if args.cpu else "gpu", "torch": torch.__version__,
              "triton": triton.__version__, "correctness": [], "timings": [], "fwdbwd_timings": [],
              "lut_entries": [], "model": [], "notes": []}
    if args.cpu:
        from sf_mamba_kernels.selective_scan import interpreter_patch
        interpreter_patch.install()
        device, gpu = torch.device("cpu"), "cpu-interpreter"
    else:
        if not torch.cuda.is_available():
            print("device_check: no CUDA GPU available; use --cpu for the interpreter smoke run", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        gpu = torch.cuda.get_device_name(device)
        report["device"] = {"name": gpu, "sm_count": torch.cuda.get_device_properties(device).multi_processor_count,
                            "capability": list(torch.cuda.get_device_capability(device))}
    log(f"device {gpu}, torch {torch.__version__}, triton {triton.__version__}")

    # (BLOCK_D * BLOCK_N rows, BLOCK_T) shapes the kernels can use
    tiles = [(4, 16)] if args.cpu else [(r, t) for r in (8, 16, 32) for t in (16, 32, 64, 128, 256, 512)
                                        if r * t <= 4096]
    checks = [("reverse probe", lambda: check_reverse_probe(device, tiles)),
              ("scan vs reference", lambda: check_scan_cases(device, args.cpu)),
              ("fold invariance", lambda: check_fold_invariance(device, args.cpu)),
              ("backend/mamba_ssm", lambda: check_backend_and_mamba(device))]
    for label, fn in checks:
        try:
            rows = fn()
        except Exception as err:
            rows = [{"check": label, "ok": False, "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc()[-2000:]}]
        report["correctness"] += rows
        log(f"{label}: {sum(r['ok'] for r in rows)}/{len(rows)} ok")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{slug(gpu)}.json"

    def save():
        """Rewrite the report after every stage, so a timeout still leaves what was measured."""
        report["wall_s"] = round(time.monotonic() - start, 1)
        report["all_correct"] = all(r["ok"] for r in report["correctness"])
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(tmp, out_path)

    def stage(name, fn):
        """Run one stage; an exception is recorded (with its traceback) instead of ending the run."""
        try:
            return fn()
        except Exception as err:
            report.setdefault("errors", []).append({"stage": name, "error": f"{type(err).__name__}: {err}",
                                                   "traceback": traceback.format_exc()[-3000:]})
            log(f"{name} FAILED: {type(err).__name__}: {err}")
            return None
        finally:
            save()

    if args.cpu:
        report["model"].append(check_model_cpu())
        report["correctness"].append(report["model"][-1])
        report["notes"].append("cpu mode: correctness only; no timings, no LUT")
        save()
    else:
        save()
        if not args.skip_lut:
            from sf_mamba.ops import lut
            lut_out = Path(args.lut_out) if args.lut_out else lut.lut_path()

            def build_lut():
                entries = lut.measure_entries(batches=[int(b) for b in args.lut_batches.split(",")],
                                              folds=(1, 2, 4, 5, 8, 10, 16, 20),
                                              device=device, log=log, rep=args.rep_ms,
                                              deadline=start + args.lut_budget_s)
                report["lut_entries"] = entries
                lut.write_entries(entries, gpu, lut.build_meta("fwd", 8), lut_out)
                os.environ[lut.LUT_PATH_ENV] = str(lut_out)  # k=LUT timings and fold='auto' read it
                report["lut_path"] = str(lut_out)
                log(f"LUT: {len(entries)} entries -> {lut_out}")

            stage("fold LUT", build_lut)
        model_reserve = 0 if args.skip_model else 60

        def timings():
            _, skipped = run_timings(device, args, deadline - model_reserve, log, rows=report["timings"])
            if skipped:
                report["notes"].append(f"{skipped} timing shapes skipped for the time budget")

        stage("timings", timings)
        stage("fwd+bwd timings", lambda: report.__setitem__(
            "fwdbwd_timings", run_fwdbwd_timings(device, args, deadline - model_reserve + 15)))
        stage("block_d sweep", lambda: report.__setitem__(
            "block_d_sweep", run_block_d_sweep(device, args, deadline - model_reserve + 30, log)))
        if not args.skip_model:
            stage("model throughput", lambda: report.__setitem__("model", run_model(device, deadline, log)))

    print(f"\n== {gpu}: correctness {sum(r['ok'] for r in report['correctness'])}/{len(report['correctness'])} ok")
    for r in report["correctness"]:
        if not r["ok"]:
            print(f"   FAIL {r['check']}: {r.get('error') or r.get('worst_excess') or r.get('max_err')}")
    if report["timings"]:
        print(f"{'dtype':>8} {'L':>4} {'D':>4} {'B':>4} {'torch':>8} {'k=1':>8} {'k':>3} {'k=LUT':>8} {'x':>5} "
              f"{'GB/s':>7} {'roof':>5} {'graph x':>7} {'roof':>5}")
        for r in report["timings"]:
            if r["batch"] == 128 or args.batches.count(",") == 0:
                print(f"{r['dtype']:>8} {r['L']:>4} {r['channels']:>4} {r['batch']:>4} {r['torch_ms']:8.4f} "
                      f"{r['triton_k1_ms']:8.4f} {r['k_lut']:>3} {r['triton_klut_ms']:8.4f} {r['fold_speedup']:5.2f} "
                      f"{r['GBps_klut']:7.1f} {r['roofline_frac_klut'] or float('nan'):5.2f} "
                      f"{r.get('fold_speedup_graph') or float('nan'):7.2f} {r.get('roofline_frac_graph') or float('nan'):5.2f}")
        speedups = [r["fold_speedup"] for r in report["timings"]]
        print(f"fold speedup (k=LUT vs k=1): geo-mean {math.exp(sum(map(math.log, speedups)) / len(speedups)):.2f}, "
              f"max {max(speedups):.2f}")
    for r in report["model"]:
        print(f"model: {r}")
    for e in report.get("errors", []):
        print(f"ERROR in {e['stage']}: {e['error']}")
    print(f"wrote {out_path} in {report['wall_s']} s")
    return 0 if report["all_correct"] and not report.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
