"""Compile the selective-scan kernels for a GPU on a machine without one, and read the result.

``python -m sf_mamba_kernels.selective_scan.aot [--out-dir results/kernels] [--arch 90 80]``

For every launch ``selective_scan_triton`` makes for the MambaVision-T stage-3/4 shapes (bf16, fp16,
fp32; fold 1..8; forward without and with checkpoints, backward) it intercepts the launch (the host
code runs on CPU tensors, nothing executes), compiles exactly that specialisation with triton's
bundled ptxas for sm_80 and sm_90, and reports per config: registers, spill bytes, shared memory,
warps, the SASS instruction count of the steady-state loop per (channel, state, step) element,
MUFU / SHFL / BAR / MEMBAR.GPU / atomic counts, and a static time estimate against the floor.

Static model (assumptions, stated once; H100 SXM): 132 SMs at 1.98 GHz, 4 warp-instructions issued
per clock per SM (one per scheduler), 16 MUFU lanes per clock per SM, HBM 3.35 TB/s. A program is one
warp; warps are spread evenly over SMs and over the 4 schedulers of an SM, and a scheduler runs its
warps' instructions back to back (latency fully hidden), so

    issue time = ceil(warps / (132 * 4)) * (instructions of one warp) / 1.98 GHz
    MUFU time  = ceil(warps / 132) * (MUFU ops of one warp) * 32 / 16 / 1.98 GHz
    HBM time   = (bytes the launch must move) / 3.35 TB/s
    estimate   = max(issue, MUFU, HBM);  floor = max(HBM bytes of the op / BW, B*D*L*N exp2 / MUFU rate)

The instruction count of a warp is the loop body times its trip count plus the rest of the kernel
once (prologue, ragged tail chunk, epilogue). ``static_fraction_of_floor = floor / estimate``.
No GPU measured any of this: these are compile-time figures.

Uses private triton APIs (``JITFunction.run`` interception, ``create_function_from_signature``,
``_pack_args``); written against triton 3.8 (``TRITON_MINOR``). Compiled figures are cached by key
(kernel source, signature, constexprs, pointer attributes, options, arch, triton version) under
``$SF_MAMBA_AOT_CACHE`` (default ``~/.cache/sf_mamba/aot``).

Cost: the 288 rows (2 archs x 144 configs) need 60 distinct compiles. The parent captures each
config once, keys it for both archs and hands each new key to a worker at once, so the workers
compile while it captures; rows are then read from the cache. A compile is ~2.5-3.5 s of CPU,
mostly triton's TTGIR and LLVM IR passes; ptxas runs once (its ``-v`` log is triton's own).
Measured times are in docs/kernels.md ("Tests of the kernel").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import static_model

TRITON_MINOR = "3.8"
ARCHS = (90, 80)
DTYPES = ("bfloat16", "float16", "float32")
FOLDS = tuple(range(1, 9))
BATCH = 256
D_STATE = 8
AUX_TOKENS = 2
# MambaVision-T: stage 3 has 14x14 windows and 160 SSM channels, stage 4 7x7 and 320.
STAGES = {3: dict(length=196 + AUX_TOKENS, channels=160), 4: dict(length=49 + AUX_TOKENS, channels=320)}
DT_RANK = {3: 20, 4: 40}  # ceil(d_model / 16) for d_model 320 / 640
BUDGETS = {"fwd": 12.0, "fwd_save": 12.0, "bwd": 36.0}
MIN_FWD_WARPS_PER_SM = 12
CACHE_SCHEMA = 2  # bump when the cached figures change shape


def cache_dir() -> Path:
    return Path(os.environ.get("SF_MAMBA_AOT_CACHE", Path.home() / ".cache" / "sf_mamba" / "aot"))


# ----------------------------------------------------------------------------------------- capture


@contextlib.contextmanager
def captured_launches():
    """Record ``JITFunction.run`` calls instead of launching (no driver needed)."""
    from triton.runtime.jit import JITFunction

    launches = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, dict(kwargs), tuple(grid)))
        return None

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def model_inputs(stage: int, dtype_name: str, batch: int = BATCH, requires_grad: bool = False):
    """The scan's inputs as the model passes them: channel-last projections seen as (B, D, L) views."""
    import torch

    dtype = getattr(torch, dtype_name)
    length, channels = STAGES[stage]["length"], STAGES[stage]["channels"]
    x = torch.zeros(batch, length, channels, dtype=dtype)
    x_dbl = torch.zeros(batch, length, DT_RANK[stage] + 2 * D_STATE, dtype=dtype)
    dt = torch.zeros(batch, length, channels, dtype=dtype)
    B = x_dbl[..., DT_RANK[stage]:DT_RANK[stage] + D_STATE].transpose(1, 2)
    C = x_dbl[..., DT_RANK[stage] + D_STATE:].transpose(1, 2)
    A = torch.zeros(channels, D_STATE)
    D = torch.zeros(channels)
    bias = torch.zeros(channels)
    tensors = [x.transpose(1, 2), dt.transpose(1, 2), A, B, C, D, None, bias]
    if requires_grad:
        tensors = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    return tensors


def capture_config(stage: int, dtype_name: str, fold: int, kernel: str):
    """The launches of one config: kernel 'fwd' (inference), 'fwd_save' (training forward) or 'bwd'."""
    import torch

    from .triton_scan import selective_scan_triton

    length = STAGES[stage]["length"]
    reset = length if fold > 1 else None  # what the model passes
    grad = kernel != "fwd"
    inputs = model_inputs(stage, dtype_name, requires_grad=grad)
    with captured_launches() as launches:
        with torch.set_grad_enabled(grad):
            out = selective_scan_triton(*inputs, True, False, reset, fold)
        if kernel == "bwd":
            out.backward(torch.zeros_like(out))
    want = "_scan_bwd_kernel" if kernel == "bwd" else "_scan_fwd_kernel"
    found = [launch for launch in launches if launch[0].fn.__name__ == want]
    if len(found) != 1:
        raise RuntimeError(f"expected one {want} launch for {kernel}, got {[l[0].fn.__name__ for l in launches]}")
    return found[0]


# ----------------------------------------------------------------------------------------- compile


def _source_hash(fn) -> str:
    return fn.cache_key if hasattr(fn, "cache_key") else hashlib.sha256(fn.src.encode()).hexdigest()


def compile_launch(launch, arch: int):
    """triton.compile of exactly the specialisation this launch would JIT, for sm_<arch>."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel, args, kwargs, _grid = launch
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**kwargs, "debug": False}
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    key_src = json.dumps([kernel.fn.__name__, _source_hash(kernel), str(signature), str(sorted(constexprs.items())),
                          str(sorted(attrs.items())), str(sorted(options.__dict__.items())), arch, CACHE_SCHEMA,
                          _triton_version()], default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    return key, (lambda: compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                 options=options.__dict__)), constexprs


def _triton_version() -> str:
    import triton

    return triton.__version__


def _tool(name: str) -> str:
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers / spills / shared from ``ptxas -v`` on the kernel's PTX (same flags as triton)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([_tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=True)
    return _parse_ptxas_log(res.stderr + res.stdout)


def _parse_ptxas_log(log: str) -> dict:
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill_st = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    spill_ld = int(re.search(r"(\d+) bytes spill loads", log).group(1))
    stack = int(re.search(r"(\d+) bytes stack frame", log).group(1))
    return dict(regs=regs, spill_bytes=spill_st + spill_ld, stack_bytes=stack)


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def sass_instructions(cubin: bytes) -> list[tuple[int, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    return [(int(m.group(1), 16), m.group(2)) for m in _SASS_LINE.finditer(text)]


def main_loop(instrs) -> tuple[int, int]:
    """(first, last) index of the steady-state loop: the backward branch spanning the most instructions."""
    index_of = {addr: i for i, (addr, _) in enumerate(instrs)}
    best = None
    for i, (addr, text) in enumerate(instrs):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m:
            target = int(m.group(1), 16)
            if target <= addr and target in index_of:
                span = (index_of[target], i)
                if best is None or span[1] - span[0] > best[1] - best[0]:
                    best = span
    if best is None:
        raise RuntimeError("no loop found in the SASS")
    return best


def _opcode(text: str) -> str:
    text = re.sub(r"^@!?U?P\w+\s+", "", text)
    return text.split()[0] if text else ""


def sass_stats(instrs, elements_per_iteration: int) -> dict:
    first, last = main_loop(instrs)
    body = [_opcode(t) for _, t in instrs[first:last + 1]]
    every = [_opcode(t) for _, t in instrs if _opcode(t) not in ("NOP",)]
    loop_count = sum(1 for op in body if op != "NOP")

    def count(ops, prefix):
        return sum(1 for op in ops if op.startswith(prefix))

    return dict(
        loop_instructions=loop_count,
        elements_per_iteration=elements_per_iteration,
        sass_per_element=round(loop_count / elements_per_iteration, 3),
        total_instructions=len(every),
        loop_mufu=count(body, "MUFU"), loop_shfl=count(body, "SHFL"), loop_bar=count(body, "BAR"),
        loop_lds=count(body, "LDS"), loop_sts=count(body, "STS"),
        loop_ldg=count(body, "LDG"), loop_stg=count(body, "STG"),
        loop_atomics=count(body, "RED") + count(body, "ATOM"),
        mufu=count(every, "MUFU"), shfl=count(every, "SHFL"), bar=count(every, "BAR"),
        membar_gpu=sum(1 for _, t in instrs if "MEMBAR" in t and ("GPU" in t or ".ALL" in t or "SYS" in t)),
        membar_any=count(every, "MEMBAR"), local_memory_ops=count(every, "LDL") + count(every, "STL"),
    )


def cached_stats(key: str):
    """The figures compiled earlier under ``key``, or None."""
    path = cache_dir() / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


@contextlib.contextmanager
def _ptxas_log_captured():
    """Make triton print its own ``ptxas -v`` log (``knobs.nvidia.dump_ptxas_log``) and collect it, so
    the figures come from the very ptxas run that produced the cubin instead of a second one."""
    import io

    from triton import knobs

    buffer = io.StringIO()
    if not hasattr(knobs.nvidia, "dump_ptxas_log"):
        yield buffer  # older triton: the caller runs ptxas itself
        return
    before = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        knobs.nvidia.dump_ptxas_log = before


def compile_and_measure(launch, arch: int, *, use_cache: bool = True, expect_key: str | None = None) -> dict:
    key, do_compile, constexprs = compile_launch(launch, arch)
    if expect_key is not None and key != expect_key:
        raise RuntimeError(f"compile key differs between processes ({key} != {expect_key}): capture is not deterministic")
    path = cache_dir() / f"{key}.json"
    if use_cache and path.exists():
        return json.loads(path.read_text())
    with _ptxas_log_captured() as ptxas_log:
        compiled = do_compile()
    usage = _parse_ptxas_log(ptxas_log.getvalue()) if "Used " in ptxas_log.getvalue() else None
    if usage is None:  # no log (older triton, or a compile served from triton's own cache)
        usage = ptxas_usage(compiled.asm["ptx"], arch)
    names = launch[0].arg_names
    const = {names[p[0]]: v for p, v in constexprs.items()}
    chunk = const["CHUNK"]
    ckpt = const.get("CKPT", chunk)  # the backward's chunk is the forward's checkpoint interval
    elements = chunk * const["N"]  # one thread: one channel, N states, CHUNK steps per iteration
    stats = dict(usage, shared_bytes=int(compiled.metadata.shared),
                 num_warps=int(compiled.metadata.num_warps), chunk=chunk, ckpt=ckpt, n_state_block=const["N"],
                 block_d=const["BLOCK_D"], **sass_stats(sass_instructions(compiled.asm["cubin"]), elements))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stats))
    tmp.replace(path)
    return stats


# ------------------------------------------------------------------------------------ static model


def warps_per_sm(regs: int, num_warps: int, shared_bytes: int) -> int:
    """Resident warps per SM from registers (65,536 per SM, 256-register granules per warp) and
    the 32-block / 64-warp limits; shared memory per block is small here (checked against 228 KB)."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = 65536 // per_warp
    blocks = min(32, by_regs // num_warps, 64 // num_warps)
    if shared_bytes:
        blocks = min(blocks, (228 * 1024) // (shared_bytes + 1024))
    return blocks * num_warps


# --------------------------------------------------------------------------------------------- run


KERNELS = ("fwd", "fwd_save", "bwd")


def all_configs():
    for stage in STAGES:
        for dtype_name in DTYPES:
            for fold in FOLDS:
                for kernel in KERNELS:
                    yield stage, dtype_name, fold, kernel


def _compile_representative(job) -> str:
    """Worker: compile one (arch, stage, dtype, fold, kernel) config into the cache."""
    arch, stage, dtype_name, fold, kernel, use_cache, key = job
    compile_and_measure(capture_config(stage, dtype_name, fold, kernel), arch, use_cache=use_cache, expect_key=key)
    return f"sm_{arch} {kernel} {dtype_name} stage {stage} fold {fold}"


def warm_cache(archs, jobs: int, *, use_cache: bool = True, log=None) -> dict:
    """Compile each distinct kernel once, ``jobs`` processes at a time, and return the configs' keys.

    The parent captures every config and computes its compile key per arch (source, signature,
    constexprs, attributes, options, arch); a key not seen before (and not cached) becomes a job as
    soon as it is found, so the workers compile while the parent is still capturing. Folds 2..8 share
    one kernel (shape ints are runtime values; fold 1 has no reset), and fp32 stage 3 and 4 share one
    (the stages differ only in whether the B/C views are 16-byte aligned, which they both are in
    fp32): 60 distinct compiles for 288 rows."""
    import multiprocessing

    keys, seen, pending = {}, set(), []
    env_before = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with contextlib.ExitStack() as stack:
            pool = None  # started at the first uncached key (its workers import while we capture); never when warm
            for config in all_configs():
                launch = capture_config(*config)
                keys[config] = {}
                for arch in archs:
                    key = compile_launch(launch, arch)[0]
                    keys[config][arch] = key
                    if key in seen or (use_cache and cached_stats(key) is not None):
                        continue
                    seen.add(key)
                    if pool is None:
                        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(jobs))
                    pending.append(pool.apply_async(_compile_representative,
                                                    ((arch, *config, use_cache, key),),
                                                    callback=(lambda done: log(f"compiled {done}")) if log else None))
                del launch
            for result in pending:
                result.get()  # re-raises a worker's compile error here
    finally:
        if env_before is not None:
            os.environ["TRITON_INTERPRET"] = env_before
    if log:
        log(f"{len(seen)} compiled, {len({k for ks in keys.values() for k in ks.values()})} distinct keys "
            f"for {sum(len(ks) for ks in keys.values())} rows")
    return keys


def build_rows(arch: int, *, use_cache: bool = True, log=None, keys=None) -> list[dict]:
    """One row per config; with ``keys`` (from ``warm_cache``) the figures are read from the cache
    without capturing the launch again."""
    rows = []
    for config in all_configs():
        stage, dtype_name, fold, kernel = config
        stats = cached_stats(keys[config][arch]) if keys is not None and use_cache else None
        if stats is None:
            stats = compile_and_measure(capture_config(*config), arch, use_cache=use_cache)
        shape = STAGES[stage]
        fig = dict(stats, d_state=D_STATE)
        est = static_model.estimate(fig, kernel, BATCH, shape["length"], shape["channels"], D_STATE, fold,
                                    dtype_name)
        row = dict(arch=f"sm_{arch}", kernel=kernel, dtype=dtype_name, stage=stage, batch=BATCH,
                   length=shape["length"], channels=shape["channels"], d_state=D_STATE, fold=fold,
                   regs=stats["regs"], spill_bytes=stats["spill_bytes"], shared_bytes=stats["shared_bytes"],
                   num_warps=stats["num_warps"], warps_per_sm=warps_per_sm(stats["regs"], stats["num_warps"],
                                                                          stats["shared_bytes"]),
                   sass_per_element=stats["sass_per_element"], loop_instructions=stats["loop_instructions"],
                   elements_per_iteration=stats["elements_per_iteration"], chunk=stats["chunk"],
                   ckpt=stats["ckpt"], block_d=stats["block_d"],
                   mufu=stats["mufu"], loop_mufu=stats["loop_mufu"], shfl=stats["shfl"], loop_shfl=stats["loop_shfl"],
                   bar=stats["bar"], loop_bar=stats["loop_bar"], membar_gpu=stats["membar_gpu"],
                   atomics_in_loop=stats["loop_atomics"], local_memory_ops=stats["local_memory_ops"],
                   total_instructions=stats["total_instructions"],
                   **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in est.items()})
        rows.append(row)
        if log:
            log(f"sm_{arch} {kernel:8s} {dtype_name:8s} stage {stage} fold {fold}: regs {row['regs']}, "
                f"spill {row['spill_bytes']}, {row['sass_per_element']} SASS/elem, "
                f"{row['static_fraction_of_floor']:.2f} of floor ({row['bound']}-bound)")
    return rows


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


def markdown_table(rows: list[dict], dtype: str = "bfloat16", folds=(1, 2, 4, 8)) -> str:
    """The docs table: one line per (kernel, stage, fold) for one dtype."""
    lines = ["| arch | kernel | stage | fold | regs | spill B | warps/SM | SASS/elem | MUFU/SHFL/BAR in loop "
             "| static µs (bound) | floor µs | static / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["dtype"] != dtype or r["fold"] not in folds:
            continue
        lines.append(f"| {r['arch']} | {r['kernel']} | {r['stage']} | {r['fold']} | {r['regs']} | {r['spill_bytes']} "
                     f"| {r['warps_per_sm']} | {r['sass_per_element']:.1f} | {r['loop_mufu']}/{r['loop_shfl']}/"
                     f"{r['loop_bar']} | {r['estimate_us']:.1f} ({r['bound']}) | {r['floor_us']:.1f} "
                     f"| {r['static_fraction_of_floor']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sf_mamba_kernels.selective_scan.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="results/kernels", help="where aot_sm<arch>.json go")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--no-cache", action="store_true", help="recompile even if cached")
    parser.add_argument("--jobs", type=int, default=1, help="compile processes (distinct kernels in parallel)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the bf16 markdown table of each arch")
    args = parser.parse_args(argv)
    try:
        import triton
    except ImportError:
        print("error: triton is not installed; the AOT compile needs it", file=sys.stderr)
        return 2
    if not triton.__version__.startswith(TRITON_MINOR):
        print(f"warning: written for triton {TRITON_MINOR}.x, found {triton.__version__}", file=sys.stderr)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET: the AOT tool compiles, it does not interpret", file=sys.stderr)
        return 2
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    keys = None
    if args.jobs > 1:
        keys = warm_cache(args.arch, args.jobs, use_cache=not args.no_cache, log=log)
        args.no_cache = False  # the rows below now read what the workers compiled
    for arch in args.arch:
        rows = build_rows(arch, use_cache=not args.no_cache, log=log, keys=keys)
        write_json(Path(args.out_dir) / f"aot_sm{arch}.json", rows)
        if args.table:
            print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
