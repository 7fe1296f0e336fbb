#!/usr/bin/env python
"""One prepared GPU check of the selective scan: correctness, timings beside the static model,
fold sweep, fold LUT and model throughput, in <= 330 s on one H100/H200.

Run from the source tree, offline, on torch >= 2.4 / Triton >= 3.6::

    PYTHONPATH=.:kernels python kernels/device_check.py --out-dir results/device        # GPU
    PYTHONPATH=.:kernels python kernels/device_check.py --cpu --out-dir /tmp/dc         # interpreter

GPU mode, in order (``--budget-s`` is a deadline: later stages skip what does not fit and say so):

1. correctness, all through ``selective_scan_fn(backend='triton')`` against the float64 reference,
   outputs, last states and all 8 gradients with mamba_ssm's tolerances: fp32/fp16/bf16, L = 49 /
   197, N = 8 / 16, groups, fixed B with variable C, ragged fold groups, resets at tile start / end /
   mid-tile, T = 1, S4D decays; the backward's reverse scan over many tiles (L = 1000, a 5 x 197
   fold, a ragged fold without reset); fold invariance; strided (model-layout) inputs;
   a non-finite image does not leak into its fold group; 'auto' picks Triton; mamba_ssm's CUDA
   scan when installed; the dB/dC atomics spread;
2. the fold LUT (:func:`bench.measure_lut_entries`), written to ``--lut-out``;
3. forward and forward+backward timings (do_bench medians, and CUDA-graph replays) of Triton k=1
   and k=LUT over L x batch x T/S/B SSM widths x dtypes, each beside the static model's estimate
   (``predict_time_us``, sm_90, labelled static) and the roofline floor from spec peaks;
4. the fold sweep (every k, reset every window, equality with k=1, predicted speed-up beside it);
5. model throughput: timm ``sf_mamba_t`` scan uni vs swap, fold 1 vs 'auto', batch 128, 224 px,
   fp16 autocast, channels_last, synchronised.

Writes ``<out-dir>/<gpu>.json`` (rewritten after every stage: a timeout keeps what was measured)
and prints a table; exit status 1 if a correctness check or a stage failed, 2 without a GPU.
``--cpu`` runs the correctness part at the smallest shapes under ``TRITON_INTERPRET=1`` and the
static estimates, and measures nothing. Inputs come from ``selective_scan.testing``, timers from
``selective_scan.bench``: the same code as the tests, ``sf_mamba fold-sweep`` and ``sf_mamba lut``.
"""

from __future__ import annotations

import argparse
import contextlib
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

from sf_mamba_kernels.selective_scan import bench, lut, resolve_backend, selective_scan_fn  # noqa: E402
from sf_mamba_kernels.selective_scan.testing import (  # noqa: E402
    make_scan_inputs, mamba_tolerances, run_with_grads, worst_excess)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# SSM widths = half the stage width; stage 3 and stage 4 of T, S, B.
SSM_WIDTHS = {"T": (160, 320), "S": (192, 384), "B": (256, 512)}


# ---------------------------------------------------------------------------------------------- correctness


def scan_fn(backend, fold, reset_every, softplus=True, last_state=False):
    def fn(**inputs):
        return selective_scan_fn(**inputs, delta_softplus=softplus, return_last_state=last_state,
                                 reset_every=reset_every, fold=fold, backend=backend)
    return fn


def compare_with_reference(inputs, fold, reset_every, softplus=True):
    """Triton vs the float64 reference: worst excess over mamba_ssm's tolerances per output."""
    dtype = inputs["u"].dtype
    ref_out, ref_grads = run_with_grads(scan_fn("reference", fold, reset_every, softplus), inputs)
    out, grads = run_with_grads(scan_fn("triton", fold, reset_every, softplus), inputs)
    got, expected = {"out": out, **grads}, {"out": ref_out, **ref_grads}
    tolerances = mamba_tolerances(dtype, inputs["z"] is not None, inputs["B"].dim() > 2, inputs["C"].dim() > 2)
    with torch.no_grad():
        _, got["last_state"] = scan_fn("triton", fold, reset_every, softplus, True)(**inputs)
        _, expected["last_state"] = scan_fn("reference", fold, reset_every, softplus, True)(**inputs)
    worst = worst_excess(got, expected, tolerances)
    return all(v <= 0 for v in worst.values()), {k: round(v, 6) for k, v in worst.items()}


def scan_cases(cpu):
    """(name, batch, channels, N, L, fold, reset_every, dtype, make_scan_inputs options)."""
    if cpu:
        return [
            ("fp32 reset mid-tile + tile end, k=4", 4, 2, 4, 5, 4, 5, torch.float32, {}),
            ("bf16 ragged group, groups=2", 3, 2, 4, 6, 2, 6, torch.bfloat16, dict(groups=2)),
            ("fp32 fixed B, variable C", 2, 2, 4, 6, 2, 6, torch.float32, dict(fixed_b=True)),
        ]
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        cases += [
            (f"{tag} L=49 k=5 N=8", 10, 16, 8, 49, 5, 49, dtype, {}),
            (f"{tag} L=197 k=3 ragged N=16 groups=2", 7, 8, 16, 197, 3, 197, dtype, dict(groups=2)),
            (f"{tag} L=8 k=4 reset at a tile start", 8, 4, 8, 8, 4, 8, dtype, {}),
            (f"{tag} L=5 k=4 reset at a tile end", 8, 4, 8, 5, 4, 5, dtype, {}),
        ]
    cases += [
        ("bf16 model layout L=198 D=160 k=4", 8, 160, 8, 198, 4, 198, torch.bfloat16, dict(layout="model")),
        ("fp32 model layout L=51 D=320 k=5 no z", 10, 320, 8, 51, 5, 51, torch.float32,
         dict(layout="model", has_z=False)),
        ("fp32 D=64 groups=2 N=16 (lane reduce, 2 sums per lane)", 4, 128, 16, 49, 2, 49, torch.float32,
         dict(groups=2)),
        ("fp32 bare (no z/D/bias)", 6, 8, 8, 49, 2, 49, torch.float32, dict(has_z=False, has_d=False, has_bias=False)),
        ("fp32 fixed B, variable C", 4, 8, 8, 49, 2, 49, torch.float32, dict(fixed_b=True)),
        ("fp32 variable B, fixed C, groups=2", 4, 8, 8, 49, 2, 49, torch.float32, dict(fixed_c=True, groups=2)),
        ("fp32 T=1", 4, 4, 8, 6, 2, 1, torch.float32, {}),
        ("fp32 s4d decays", 4, 4, 16, 49, 4, 49, torch.float32, dict(s4d=True)),
        ("fp32 mamba grid L=512 groups=2", 2, 4, 8, 512, 1, None, torch.float32, dict(groups=2)),
    ]
    return cases


def reverse_cases(cpu):
    """The backward's reverse scan across many tiles and image boundaries."""
    if cpu:
        return [("fp32 reverse over 3 images, ragged", 3, 2, 4, 7, 3, 7, torch.float32, {})]
    return [("fp32 k=1 L=1000 (reverse over many tiles)", 2, 4, 8, 1000, 1, 1000, torch.float32, {}),
            ("bf16 k=5 L=197 (985-token reverse, resets)", 10, 16, 8, 197, 5, 197, torch.bfloat16, {}),
            ("fp32 k=3 L=199 ragged, no reset (state crosses images)", 7, 8, 8, 199, 3, None, torch.float32, {})]


def flipped_path_cases(cpu):
    """Cases for the non-default paths (:data:`FLIPPED`): the backward's per-value shuffle tree and the
    forward's prefetch."""
    if cpu:
        return [("fp32 D=32 shuffle-tree dB/dC", 2, 32, 4, 6, 2, 6, torch.float32, {})]
    return [("bf16 model layout L=198 D=160 k=4, shuffle tree", 8, 160, 8, 198, 4, 198, torch.bfloat16,
             dict(layout="model")),
            ("fp32 D=64 groups=2 N=16, shuffle tree", 4, 128, 16, 49, 2, 49, torch.float32, dict(groups=2))]


@contextlib.contextmanager
def scan_env(**values):
    """Set the scan's path switches (``LANE_REDUCE_ENV="0"`` ...) for a block, restoring them after."""
    from sf_mamba_kernels.selective_scan import triton_scan

    names = {getattr(triton_scan, key): value for key, value in values.items()}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The path switches flipped from their defaults: the dB/dC shuffle tree and the prefetching forward.
FLIPPED = {"LANE_REDUCE_ENV": "0", "PREFETCH_ENV": "1"}
FLIPPED_LABEL = "shuffle tree + prefetch vs reference"


def case_groups(cpu):
    """(label, cases, path switches) of the correctness cases, serial or in worker processes."""
    return [("triton vs reference", scan_cases(cpu), {}),
            ("backward vs reference", reverse_cases(cpu), {}),
            (FLIPPED_LABEL, flipped_path_cases(cpu), FLIPPED)]


def check_cases(cases, device, label):
    rows = []
    for name, batch, channels, n_state, length, fold, reset_every, dtype, opts in cases:
        inputs = make_scan_inputs(batch, channels, n_state, length, dtype=dtype, device=device, **opts)
        check = f"{label}: {name}"
        try:
            ok, worst = compare_with_reference(inputs, fold, reset_every)
            rows.append({"check": check, "ok": ok, "worst_excess": worst})
        except Exception as err:  # one failing case must not hide the others
            rows.append({"check": check, "ok": False, "error": f"{type(err).__name__}: {err}"[:300]})
    return rows


def check_fold_invariance(device, cpu):
    batch, length = (5, 6) if cpu else (13, 49)
    inputs = make_scan_inputs(batch, 2 if cpu else 16, 4 if cpu else 8, length, device=device, seed=4)
    base = run_with_grads(scan_fn("triton", 1, length), inputs)
    rows = []
    for k in ((2, 5) if cpu else (2, 4, 5, 13)):
        out, grads = run_with_grads(scan_fn("triton", k, length), inputs)
        err = max([float((out - base[0]).abs().max())]
                  + [float((grads[n] - base[1][n]).abs().max() / (base[1][n].abs().max() + 1e-12)) for n in grads])
        rows.append({"check": f"fold invariance k={k} vs k=1 (out abs, grads rel)", "ok": err < 1e-4, "max_err": err})
    return rows


def check_strided_and_nonfinite(device, cpu):
    """Model-layout (channel-last) views give the contiguous result; an inf in one image stays there."""
    batch, channels, length = (4, 2, 6) if cpu else (8, 16, 49)
    inputs = make_scan_inputs(batch, channels, 4 if cpu else 8, length, device=device, seed=6)
    views = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if k in ("u", "delta", "B", "C", "z") else v)
             for k, v in inputs.items()}
    with torch.no_grad():
        dense = scan_fn("triton", 2, length)(**inputs)
        strided = scan_fn("triton", 2, length)(**views)
        rows = [{"check": "strided (channel-last) inputs equal contiguous", "ok": bool(torch.equal(dense, strided)),
                 "max_abs_diff": float((dense - strided).abs().max())}]
        poisoned = dict(inputs, u=inputs["u"].clone())
        poisoned["u"][0, :, length // 2] = float("inf")
        out = scan_fn("triton", batch, length)(**poisoned)  # every image in one fold group
        clean = bool(torch.isfinite(out[1:]).all()) and bool(torch.allclose(out[1:], dense[1:], rtol=1e-4, atol=1e-4))
    rows.append({"check": "non-finite image does not leak into its fold group", "ok": clean})
    return rows


def check_backend_and_mamba(device):
    picked = resolve_backend("auto", device)
    rows = [{"check": "backend 'auto' on this device", "picked": picked,
             "ok": picked == ("triton" if device.type == "cuda" else "torch")}]
    if device.type != "cuda":
        return rows
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_scan
    except Exception as err:  # optional dependency
        rows.append({"check": "mamba_ssm selective_scan_fn", "ok": True,
                     "skipped": f"mamba_ssm not importable: {type(err).__name__}"})
    else:
        inputs = make_scan_inputs(4, 16, 8, 197, dtype=torch.bfloat16, device=device, seed=2)
        args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        ours = selective_scan_fn(*args, True, backend="triton")
        theirs = mamba_scan(*args, True)  # the same positional call means the same thing
        worst = worst_excess({"out": ours}, {"out": theirs}, mamba_tolerances(torch.bfloat16, True))["out"]
        rows.append({"check": "mamba_ssm selective_scan_fn vs ours (same positional call, bf16)",
                     "ok": worst <= 0, "worst_excess": worst})
    # dB/dC accumulate with atomics in nondeterministic order: report the spread of two backward runs
    inputs = make_scan_inputs(32, 160, 8, 198, device=device, seed=3)
    runs = [run_with_grads(scan_fn("triton", 4, 198), inputs)[1] for _ in range(2)]
    spread = max(float((runs[0][n] - runs[1][n]).abs().max()) for n in ("B", "C"))
    rows.append({"check": "dB/dC run-to-run spread (informational)", "ok": True, "max_abs_diff": spread})
    return rows


def check_model(device):
    """The smallest model, one forward through the Triton backend (CPU: interpreter)."""
    name = "model sf_mamba_micro forward (triton backend, fold 2)"
    try:
        import timm

        import sf_mamba.models  # noqa: F401  (registers the variants with timm)
        model = timm.create_model("sf_mamba_micro", backend="triton", fold=2).eval().to(device)
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32, device=device))
    except Exception as err:
        return {"check": name, "ok": False, "error": f"{type(err).__name__}: {err}"[:300],
                "traceback": traceback.format_exc()[-2000:]}
    return {"check": name, "ok": bool(torch.isfinite(out).all()), "out_shape": list(out.shape)}


# ---------------------------------------------------------------------------------------------- timing


def static_us(batch, length, channels, fold, dtype, direction="fwd"):
    value = bench.predicted_time_us(batch, length, channels, 8, fold, dtype, direction=direction)
    return None if value is None else round(value, 2)


def time_shape(device, batch, length, channels, dtype, mode, rep_ms, graphs):
    """Measured ms of Triton k=1 and k=LUT for one shape, with the static estimates beside them."""
    inputs = make_scan_inputs(batch, channels, 8, length, dtype=dtype, has_z=False, device=device, layout="model")
    k = max(1, min(lut.lookup_fold(batch, length, channels, dtype, device), batch))
    row = {"mode": mode, "dtype": lut.dtype_name(dtype), "L": length, "batch": batch, "channels": channels, "k_lut": k}
    for label, fold in (("k1", 1), ("klut", k)):
        if label == "klut" and k == 1:
            for key in ("ms", "graph_ms", "static_us"):
                row[f"{label}_{key}"] = row[f"k1_{key}"]
            continue
        call = bench.scan_call(inputs, fold=fold, reset_every=length, backend="triton", mode=mode)
        row[f"{label}_ms"] = round(bench.median_ms(call, warmup=3, rep=rep_ms), 5)
        row[f"{label}_graph_ms"] = bench.graph_median_ms(call, rep_ms) if graphs else None
        # training forward (saves checkpoints) + backward for fwdbwd, as the static model names them
        row[f"{label}_static_us"] = static_us(batch, length, channels, fold, dtype, mode)
    row["fold_speedup"] = round(row["k1_ms"] / row["klut_ms"], 3)
    predicted = bench.predicted_fold_speedup(batch, length, channels, 8, k, dtype)
    row["predicted_speedup_static_sm90"] = None if predicted is None else round(predicted, 3)
    if mode == "fwd":
        props = torch.cuda.get_device_properties(device)
        floor, n_bytes, n_exp = bench.roofline_floor_s(batch, channels, length, 8, dtype, props.name,
                                                       props.multi_processor_count)
        best = row["klut_graph_ms"] or row["klut_ms"]
        row.update(bytes=n_bytes, exp2=n_exp, GBps_klut=round(n_bytes / (row["klut_ms"] * 1e-3) / 1e9, 1),
                   roofline_floor_ms=round(floor * 1e3, 5) if floor else None,
                   roofline_fraction=round(floor * 1e3 / best, 3) if floor else None)
    return row


def run_timings(device, args, deadline, log, rows, mode, shapes):
    skipped = 0
    for dtype_name, length, channels, batch in shapes:
        if time.monotonic() > deadline:
            skipped += 1
            continue
        row = time_shape(device, batch, length, channels, DTYPES[dtype_name], mode, args.rep_ms, True)
        rows.append(row)
        log(f"{mode:>6} {dtype_name:>8} L={length:<4} D={channels:<4} B={batch:<4} "
            f"k=1 {row['k1_ms']:8.4f} ms (graph {row['k1_graph_ms']}, static {row['k1_static_us']} us)  "
            f"k={row['k_lut']:<2} {row['klut_ms']:8.4f} ms "
            f"(static {row['klut_static_us']} us)  x{row['fold_speedup']:.2f} "
            f"(predicted x{row['predicted_speedup_static_sm90']})")
    return skipped


def run_model(device, deadline, log, rounds=3, repeats=10):
    """img/s of sf_mamba_t, scan uni vs swap x fold 1 vs 'auto': every variant built and warmed first,
    then measured in interleaved rounds (forward order, then reversed) so that clock or cache drift
    does not favour whichever runs first; the report keeps each round and their median."""
    try:
        import timm

        import sf_mamba.models  # noqa: F401
    except Exception as err:
        return [{"skipped": f"model not importable: {type(err).__name__}: {err}"[:300]}]
    x = torch.randn(128, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    variants, rows = [], {}
    for scan in ("uni", "swap"):
        for fold in (1, "auto"):
            try:
                model = timm.create_model("sf_mamba_t", scan=scan, fold=fold, backend="triton")
                model = model.to(device).eval().to(memory_format=torch.channels_last)

                def forward(model=model):
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                        return model(x)

                bench.wall_times_ms(forward, repeats=1, warmup=5, device=device)
                variants.append(((scan, fold), forward))
                rows[(scan, fold)] = {"scan": scan, "fold": fold, "batch": 128, "img_per_s_rounds": []}
            except Exception as err:
                rows[(scan, fold)] = {"scan": scan, "fold": fold, "error": f"{type(err).__name__}: {err}"[:300]}
    for r in range(rounds):
        for key, forward in (variants if r % 2 == 0 else variants[::-1]):
            if time.monotonic() > deadline:
                rows[key].setdefault("skipped", "time budget")
                continue
            times = bench.wall_times_ms(forward, repeats=repeats, warmup=1, device=device)
            rows[key]["img_per_s_rounds"].append(round(128 * repeats / (sum(times) / 1e3), 1))
    for key, row in rows.items():
        measured = row.get("img_per_s_rounds")
        if measured:
            row["img_per_s"] = sorted(measured)[len(measured) // 2]
            log(f"model sf_mamba_t scan={key[0]} fold={key[1]}: {row['img_per_s']} img/s (rounds {measured})")
    return list(rows.values())


def _case_worker(job):
    """One correctness case in a worker process (GPU mode): triton compiles in parallel."""
    label, case, switches = job
    with scan_env(**switches):
        return check_cases([case], torch.device("cuda", 0), label)


def _warm_worker(job):
    """Compile a timing configuration (a tiny call with the same specialisation) into triton's disk cache."""
    dtype_name, length, channels, switches = job
    inputs = make_scan_inputs(2, channels, 8, length, dtype=DTYPES[dtype_name], has_z=False, device="cuda",
                              layout="model")
    with scan_env(**switches):
        for mode in ("fwd", "fwdbwd"):
            bench.scan_call(inputs, fold=1, reset_every=length, backend="triton", mode=mode)()
    torch.cuda.synchronize()
    return []


def run_parallel(jobs, worker, n_procs, log):
    """Run jobs in ``n_procs`` spawned processes (each compiles its own kernels; the disk cache is
    shared), rows in job order; a job that raises becomes a failed row."""
    import concurrent.futures
    import multiprocessing

    rows = []
    with concurrent.futures.ProcessPoolExecutor(n_procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(worker, job) for job in jobs]
        for job, future in zip(jobs, futures):
            try:
                rows += future.result()
            except Exception as err:
                rows.append({"check": f"{job[0]}", "ok": False, "error": f"{type(err).__name__}: {err}"[:300]})
    log(f"{len(jobs)} jobs in {n_procs} processes")
    return rows


# ---------------------------------------------------------------------------------------------- main


def kernel_identity() -> dict:
    """Which kernel source was measured (its sha256: the device's copy of the tree has no reliable git HEAD)."""
    import hashlib

    source = REPO / "kernels" / "sf_mamba_kernels" / "selective_scan" / "triton_scan.py"
    return {"triton_scan_sha256": hashlib.sha256(source.read_bytes()).hexdigest()[:16]}


def slug(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="interpreter, smallest shapes, no timings")
    parser.add_argument("--out-dir", default=str(REPO / "results" / "device"))
    parser.add_argument("--lut-out", default=None, help="fold LUT to write (default: <out-dir>/fold_lut.json)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip remaining work after this")
    parser.add_argument("--seq-lens", default="49,196,199", help="timing lengths (199 = 197 + 2 aux)")
    parser.add_argument("--batches", default="32,128,256")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--lut-batches", default="1,8,32,128,256")
    parser.add_argument("--rep-ms", type=int, default=20)
    parser.add_argument("--lut-budget-s", type=float, default=120.0, help="stop the LUT sweep this long after the start")
    parser.add_argument("--skip-lut", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                        help="GPU mode: processes that compile and run the correctness cases in parallel")
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s

    def log(msg):
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", flush=True)

    import triton

    report = {"mode": "cpu-interpreter" if args.cpu else "gpu", "torch": torch.__version__,
              "triton": triton.__version__, "correctness": [], "timings": [], "fwdbwd_timings": [],
              "fold_sweep": [], "lut_entries": [], "model": [], "kernel": kernel_identity(), "notes": [
                  "static_us / predicted_*: the static model of the Triton kernel on sm_90 (compiled, not run); "
                  "every *_ms is measured in this run; roofline peaks are spec assumptions"]}
    if args.cpu:
        try:
            from sf_mamba_kernels.selective_scan import interpreter_patch
            interpreter_patch.install()
        except ImportError:
            pass
        device, gpu = torch.device("cpu"), "cpu-interpreter"
    else:
        if not torch.cuda.is_available():
            print("device_check: no CUDA GPU available; use --cpu for the interpreter smoke run", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(device)
        gpu = props.name
        report["device"] = {"name": gpu, "sm_count": props.multi_processor_count,
                            "capability": list(torch.cuda.get_device_capability(device))}
    log(f"device {gpu}, torch {torch.__version__}, triton {triton.__version__}")
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

    if not args.cpu and args.jobs > 1:  # compile in parallel: serially the ~60 kernels take ~3 min
        def parallel_checks():
            jobs = [(label, case, switches) for label, cases, switches in case_groups(False) for case in cases]
            rows = run_parallel(jobs, _case_worker, args.jobs, log)
            if all("error" in row for row in rows):  # the pool itself broke (not the kernels): run them here
                log("parallel checks all errored; running them serially")
                rows = []
                for job in jobs:
                    rows += _case_worker(job)
            warm = [(d, L, ch, switches) for d in args.dtypes.split(",") for L in ints(args.seq_lens)
                    for ch in (160, 320) for switches in ({}, FLIPPED)]
            run_parallel(warm, _warm_worker, args.jobs, log)
            return rows

        checks = [("scan / backward / shuffle-tree vs reference (parallel)", parallel_checks)]
    else:
        def serial_checks(label, cases, switches):
            with scan_env(**switches):
                return check_cases(cases, device, label)

        checks = [(group[0], lambda group=group: serial_checks(*group)) for group in case_groups(args.cpu)]
    checks += [("fold invariance", lambda: check_fold_invariance(device, args.cpu)),
              ("strided / non-finite", lambda: check_strided_and_nonfinite(device, args.cpu)),
              ("backend / mamba_ssm", lambda: check_backend_and_mamba(device)),
              ("model", lambda: [check_model(device)])]
    for label, fn in checks:
        try:
            rows = fn()
        except Exception as err:
            rows = [{"check": label, "ok": False, "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc()[-2000:]}]
        report["correctness"] += rows
        log(f"{label}: {sum(r['ok'] for r in rows)}/{len(rows)} ok")
    save()

    # static estimates of the stage-3/4 shapes: printed in both modes, measured beside them on a GPU
    report["static"] = [{"L": L, "channels": ch, "batch": 128, "dtype": "bfloat16", "fold": k,
                         "fwd_us": static_us(128, L, ch, k, torch.bfloat16),
                         "fwdbwd_us": static_us(128, L, ch, k, torch.bfloat16, "fwdbwd"),
                         "predicted_speedup": bench.predicted_fold_speedup(128, L, ch, 8, k, torch.bfloat16)}
                        for L, ch in ((198, 160), (51, 320)) for k in (1, 2, 4, 5, 8)]
    save()
    if args.cpu:
        report["notes"].append("cpu mode: correctness and static estimates only; nothing timed")
    else:
        if not args.skip_lut:
            lut_out = Path(args.lut_out) if args.lut_out else out_dir / "fold_lut.json"

            def build_lut():
                entries = bench.measure_lut_entries(batches=ints(args.lut_batches), folds=(1, 2, 4, 5, 8, 10, 16),
                                                    dtypes=("bfloat16", "float16"), device=device, log=log,
                                                    rep=args.rep_ms, deadline=start + args.lut_budget_s)
                report["lut_entries"] = entries
                lut.write_entries(entries, gpu, bench.lut_meta("fwd", 8), lut_out)
                os.environ[lut.LUT_PATH_ENV] = str(lut_out)  # k=LUT timings and fold='auto' read it
                report["lut_path"] = str(lut_out)
                log(f"LUT: {len(entries)} entries -> {lut_out}")

            stage("fold LUT", build_lut)
        reserve = 0 if args.skip_model else 60
        fwd_shapes = [(d, L, ch, b) for d in args.dtypes.split(",") for L in ints(args.seq_lens)
                      for widths in SSM_WIDTHS.values() for ch in widths for b in ints(args.batches)]
        bwd_shapes = [("bfloat16", L, ch, 128) for L in ints(args.seq_lens) for ch in SSM_WIDTHS["T"]]

        def timings(mode, shapes, until):
            skipped = run_timings(device, args, until, log, report["timings" if mode == "fwd" else "fwdbwd_timings"],
                                  mode, shapes)
            if skipped:
                report["notes"].append(f"{mode}: {skipped} timing shapes skipped for the time budget")

        stage("fwd+bwd timings", lambda: timings("fwdbwd", bwd_shapes, deadline - reserve - 60))

        def shuffle_tree_timings():
            """The same fwd+bwd with the dB/dC shuffle-tree fallback: what the reduce-scatter buys."""
            with scan_env(LANE_REDUCE_ENV="0"):
                rows = []
                run_timings(device, args, deadline - reserve - 60, log, rows, "fwdbwd",
                            [("bfloat16", L, 160 if L > 100 else 320, 128) for L in ints(args.seq_lens)])
                report["fwdbwd_timings_shuffle_tree"] = rows

        stage("fwd+bwd timings, shuffle-tree dB/dC", shuffle_tree_timings)

        def toggled_prefetch_timings():
            """The forward with the next-chunk prefetch toggled from its default: what latency hiding buys."""
            from sf_mamba_kernels.selective_scan import triton_scan

            other = "0" if triton_scan.prefetch_enabled() else "1"
            with scan_env(PREFETCH_ENV=other):
                rows = []
                run_timings(device, args, deadline - reserve - 45, log, rows, "fwd",
                            [("bfloat16", L, ch, b) for L in ints(args.seq_lens) for ch in SSM_WIDTHS["T"]
                             for b in ints(args.batches)])
                report[f"fwd_timings_prefetch_{'on' if other == '1' else 'off'}"] = rows

        stage("forward timings, prefetch toggled", toggled_prefetch_timings)
        stage("forward timings", lambda: timings("fwd", fwd_shapes, deadline - reserve - 30))

        def sweep():
            if time.monotonic() < deadline - reserve:
                report["fold_sweep"] = bench.fold_sweep([128], [51, 198], [160, 320], [1, 2, 4, 5, 8], d_state=8,
                                                        backend="triton", device=device, dtype=torch.bfloat16,
                                                        rep_ms=args.rep_ms, atol=5e-2, layout="model")

        stage("fold sweep", sweep)
        if not args.skip_model:
            stage("model throughput", lambda: report.__setitem__("model", run_model(device, deadline, log)))

    print(f"\n== {gpu}: correctness {sum(r['ok'] for r in report['correctness'])}/{len(report['correctness'])} ok")
    for r in report["correctness"]:
        if not r["ok"]:
            print(f"   FAIL {r['check']}: {r.get('error') or r.get('worst_excess') or r.get('max_err')}")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for key in ("fwdbwd_timings", "timings"):
        if report[key]:
            print(f"{key}: measured ms beside the static estimate (sm_90, us)")
            print(f"{'dtype':>8} {'L':>4} {'D':>4} {'B':>4} {'k=1 ms':>8} {'static':>7} {'k':>3} {'k=LUT ms':>9} "
                  f"{'static':>7} {'x meas':>6} {'x pred':>6} {'roof':>5}")
            for r in report[key]:
                print(f"{r['dtype']:>8} {r['L']:>4} {r['channels']:>4} {r['batch']:>4} {r['k1_ms']:8.4f} "
                      f"{fmt(r['k1_static_us'], '7.1f')} {r['k_lut']:>3} {r['klut_ms']:9.4f} "
                      f"{fmt(r['klut_static_us'], '7.1f')} {r['fold_speedup']:6.2f} "
                      f"{fmt(r['predicted_speedup_static_sm90'], '6.2f')} {fmt(r.get('roofline_fraction'), '5.2f')}")
            speedups = [r["fold_speedup"] for r in report[key]]
            print(f"  fold speed-up k=LUT vs k=1: geo-mean {math.exp(sum(map(math.log, speedups)) / len(speedups)):.2f}"
                  f", max {max(speedups):.2f}")
    for r in report["fold_sweep"]:
        print(f"sweep B={r['batch']} L={r['length']} D={r['channels']} k={r['fold']}: {r['time_ms']:.4f} ms "
              f"x{r['speedup_vs_fold1']:.2f} (predicted {fmt(r['predicted_speedup_static_sm90'], '.2f')}) "
              f"equal={r['equal']}")
    for r in report["static"]:
        print(f"static L={r['L']} D={r['channels']} B=128 bf16 k={r['fold']}: fwd {r['fwd_us']} us, "
              f"fwd+bwd {r['fwdbwd_us']} us, predicted x{fmt(r['predicted_speedup'], '.2f')}")
    for r in report["model"]:
        print(f"model: {r}")
    for e in report.get("errors", []):
        print(f"ERROR in {e['stage']}: {e['error']}")
    save()
    print(f"wrote {out_path} in {report['wall_s']} s")
    return 0 if report["all_correct"] and not report.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
