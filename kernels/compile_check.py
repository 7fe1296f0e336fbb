#!/usr/bin/env python
"""Compile, without a GPU, every kernel specialisation that ``device_check.py``'s correctness cases
launch, for one target, with whatever triton is importable: the check to run before a GPU run.

The GPU machine's triton (3.6) is not our pin (3.8): layouts, type checks and register allocation
differ between them (3.6 rejected a kernel 3.8 compiled; docs/kernels.md). Install that triton
into a folder and put it first on the path::

    pip install --target /tmp/t36 --no-deps triton==3.6.0
    PYTHONPATH=/tmp/t36:.:kernels python kernels/compile_check.py            # sm_90, every case
    PYTHONPATH=.:kernels python kernels/compile_check.py --arch 80 --limit 3  # the pinned triton

Each case is captured on CPU tensors twice: once with the default paths and once with both
switches flipped (the dB/dC shuffle tree and the forward's prefetch), the forward with and without
checkpoints, the backward, and the last-state forward. Distinct compile keys are compiled once.
Prints one line per failure and a summary; exit status 1 if any kernel failed to compile.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "kernels"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def load_device_check():
    spec = importlib.util.spec_from_file_location("device_check", REPO / "kernels" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def captured(case, switches: dict, device_check):
    """The launches one correctness case makes (forward with checkpoints, backward, last state)."""
    import torch

    from sf_mamba_kernels.selective_scan import aot, triton_scan
    from sf_mamba_kernels.selective_scan.testing import SCAN_ARGS, make_scan_inputs

    _name, batch, channels, n_state, length, fold, reset_every, dtype, opts = case
    inputs = make_scan_inputs(batch, channels, n_state, length, dtype=dtype, requires_grad=True, **opts)
    args = [inputs[name] for name in SCAN_ARGS]
    with device_check.scan_env(**switches), aot.captured_launches() as launches:
        out = triton_scan.selective_scan_triton(*args, True, False, reset_every, fold)
        out.backward(torch.randn_like(out))
        with torch.no_grad():
            triton_scan.selective_scan_triton(*args, True, True, reset_every, fold)
    return launches


def root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, choices=(80, 90))
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases (a quick check)")
    args = parser.parse_args(argv)

    import triton

    from sf_mamba_kernels.selective_scan import aot

    device_check = load_device_check()
    cases = [case for _label, group, _switches in device_check.case_groups(False) for case in group]
    cases = cases[:args.limit] if args.limit else cases
    start, compiled, failures = time.monotonic(), set(), []
    for case in cases:
        for switches in ({}, device_check.FLIPPED):  # the defaults, then both switches flipped
            for launch in captured(case, switches, device_check):
                key, compile_now, _ = aot.compile_launch(launch, args.arch)
                if key in compiled:
                    continue
                compiled.add(key)
                try:
                    compile_now()
                except Exception as err:  # report every failing kernel, not just the first
                    failures.append(key)
                    print(f"FAIL {case[0]} {launch[0].fn.__name__} ({switches or 'default paths'}): "
                          f"{root_cause(err)!r}"[:800], flush=True)
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(compiled)} distinct kernels from {len(cases)} cases, "
          f"{len(failures)} failed, {time.monotonic() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
