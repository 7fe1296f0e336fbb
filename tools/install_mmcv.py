#!/usr/bin/env python3
"""Install mmcv 2.1.0 WITH its compiled ops into the running interpreter's environment.

Detection (mmdet: RoIAlign, NMS) needs mmcv's compiled ops; PyPI only carries mmcv 2.1.0 as an sdist.
Order of preference (``decide``):

1. mmcv 2.1.0 with a loadable ``mmcv._ext`` is already installed      -> nothing to do;
2. a prebuilt wheel for this Python/platform (``--wheel-dir``, e.g. ../shared/wheels, or our cache of a
   previous build for this exact torch version)                         -> install it;
3. otherwise                                                             -> build it from PyPI's sdist
   (one time: ~20-35 min on 2 cores), keep the wheel in the cache, install it.

``--mode lite`` is the explicit opt-in to mmcv-lite (no compiled ops: segmentation works, detection
refuses to train and the DAG skips its rows). Stdlib only: it runs before anything else is importable.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MMCV_VERSION = "2.1.0"
# Build-time tools for the sdist (exact pins: a reproduction's build is part of it).
BUILD_REQUIREMENTS = ("setuptools>=77.0.3,<82", "ninja==1.13.2", "wheel==0.48.0")
BUILD_MINUTES = "20-35"


@dataclass(frozen=True)
class Plan:
    action: str  # 'present' | 'wheel' | 'build' | 'lite'
    wheel: Path | None = None
    reason: str = ""


def wheel_tags() -> tuple[str, str]:
    """(python tag, platform tag) of the running interpreter, as in a wheel name: ('cp311', 'linux_x86_64')."""
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return py, plat


def find_wheel(dirs, py_tag: str, plat_tag: str) -> Path | None:
    """First ``mmcv-2.1.0-<py>-<py>-<plat>.whl`` in ``dirs`` (missing dirs are skipped)."""
    name = f"mmcv-{MMCV_VERSION}-{py_tag}-{py_tag}-{plat_tag}.whl"
    for d in dirs:
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    return None


def cache_dir(torch_version: str) -> Path:
    """Where a wheel we built is kept: it is tied to the torch version it was compiled against."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "sf-mamba" / f"mmcv-{MMCV_VERSION}-torch-{torch_version}"


def decide(mode: str, ext_loads: bool, installed_version: str | None, wheel_dirs, torch_version: str,
           tags: tuple[str, str] | None = None) -> Plan:
    """Pure decision (unit-tested): what to do given what is installed and which wheels exist."""
    if mode == "lite":
        return Plan("lite", reason="mmcv-lite requested explicitly (no compiled ops: detection is skipped)")
    if mode != "auto":
        raise ValueError(f"unknown mode {mode!r} (expected 'auto' or 'lite')")
    if ext_loads and installed_version == MMCV_VERSION:
        return Plan("present", reason=f"mmcv {MMCV_VERSION} with compiled ops is already installed")
    py_tag, plat_tag = tags or wheel_tags()
    dirs = [*wheel_dirs, cache_dir(torch_version)]
    wheel = find_wheel(dirs, py_tag, plat_tag)
    if wheel is not None:
        return Plan("wheel", wheel=wheel, reason=f"prebuilt wheel {wheel}")
    return Plan("build", reason=f"no prebuilt mmcv {MMCV_VERSION} wheel for {py_tag}/{plat_tag} in "
                                f"{', '.join(str(d) for d in dirs)}")


def patch_cxx_standard(setup_py: Path) -> int:
    """torch >= 2.14's headers need C++20; mmcv's setup.py asks for c++14/c++17. Returns #flags changed."""
    text = setup_py.read_text()
    new, count = re.subn(r"-std=c\+\+1[47]", "-std=c++20", text)
    setup_py.write_text(new)
    return count


def _probe(python: str) -> tuple[bool, str | None, str]:
    """(mmcv._ext loads, installed mmcv version or None, torch version) in ``python``'s environment."""
    code = (
        "import importlib.metadata as m, torch\n"
        "v = None\n"
        "try: v = m.version('mmcv')\n"
        "except m.PackageNotFoundError: pass\n"
        "ok = False\n"
        "if v:\n"
        "    try:\n"
        "        import mmcv._ext; ok = True\n"
        "    except Exception: ok = False\n"
        "print(ok, v, torch.__version__.split('+')[0])\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", (None if out[1] == "None" else out[1]), out[2]


def _pip(python: str, *args: str, env=None) -> None:
    subprocess.run([python, "-m", "pip", *args], check=True, env=env)


def build_wheel(python: str, out_dir: Path, jobs: int, log_path: Path, work_dir: Path | None = None) -> Path:
    """Download mmcv 2.1.0's sdist, patch it to C++20, compile it with ops into a wheel in ``out_dir``."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="mmcv-build-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MMCV_WITH_OPS="1", MAX_JOBS=str(jobs))
    # setup.py looks for the `ninja` executable on PATH: put the build interpreter's bin first.
    env["PATH"] = str(Path(python).parent) + os.pathsep + env.get("PATH", "")
    _pip(python, "install", "--quiet", *BUILD_REQUIREMENTS, env=env)
    # No build isolation: setup.py imports torch (to compile against it) and pkg_resources.
    _pip(python, "download", "--quiet", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
         f"mmcv=={MMCV_VERSION}", "-d", str(work), env=env)
    sdist = work / f"mmcv-{MMCV_VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / f"mmcv-{MMCV_VERSION}"
    changed = patch_cxx_standard(src / "setup.py")
    print(f"patched {changed} C++ standard flag(s) in setup.py to -std=c++20", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [python, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", str(src), "-w", str(out_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        while proc.poll() is None:
            time.sleep(60)
            if proc.poll() is None:
                print(f"  ... still compiling mmcv ops ({(time.monotonic() - started) / 60:.0f} min; log: {log_path})",
                      flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: building mmcv {MMCV_VERSION} failed (exit {proc.returncode}); see {log_path}")
    wheels = sorted(out_dir.glob(f"mmcv-{MMCV_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"error: the mmcv build produced no wheel in {out_dir}; see {log_path}")
    return wheels[-1]


def install_wheel(python: str, wheel: Path) -> None:
    subprocess.run([python, "-m", "pip", "uninstall", "--quiet", "-y", "mmcv-lite"], check=False,
                   capture_output=True)
    _pip(python, "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="auto", choices=["auto", "lite"])
    p.add_argument("--wheel-dir", action="append", default=[], help="folder that may hold a prebuilt wheel")
    p.add_argument("--python", default=sys.executable, help="interpreter of the environment to install into")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compile jobs")
    p.add_argument("--build-only", type=Path, default=None,
                   help="build the wheel into this folder and stop (no install; for checking the recipe)")
    args = p.parse_args(argv)

    if args.build_only is not None:
        started = time.monotonic()
        wheel = build_wheel(args.python, args.build_only, args.jobs, args.build_only / "build.log",
                            work_dir=args.build_only / "src")
        print(f"built {wheel} in {(time.monotonic() - started) / 60:.1f} min")
        return 0

    if args.mode == "lite":
        print("installing mmcv-lite 2.1.0 (explicit opt-in: no compiled ops; detection is skipped)")
        subprocess.run([args.python, "-m", "pip", "uninstall", "--quiet", "-y", "mmcv"], check=False,
                       capture_output=True)
        _pip(args.python, "install", "--quiet", f"mmcv-lite=={MMCV_VERSION}")
        return 0

    ext_loads, installed, torch_version = _probe(args.python)
    plan = decide(args.mode, ext_loads, installed, args.wheel_dir, torch_version)
    if plan.action == "present":
        print(plan.reason)
        return 0
    if plan.action == "wheel":
        print(f"installing mmcv {MMCV_VERSION} with CPU ops from {plan.wheel}")
        install_wheel(args.python, plan.wheel)
    else:
        target = cache_dir(torch_version)
        print(f"{plan.reason}:\nbuilding mmcv {MMCV_VERSION} with its compiled ops from PyPI's sdist against torch "
              f"{torch_version} -- a one-time cost of about {BUILD_MINUTES} min on 2 cores; the wheel is kept in "
              f"{target} for later set-ups", flush=True)
        with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
            wheel = build_wheel(args.python, target, args.jobs, target / "build.log", work_dir=Path(tmp))
        install_wheel(args.python, wheel)
    ext_loads, installed, _ = _probe(args.python)
    if not ext_loads:
        # A wheel built against another torch fails to load its C++ extension: say so, do not leave it silently.
        print(f"error: mmcv {installed} is installed but mmcv._ext does not load (a wheel built against another "
              f"torch?). Remove the wheel and rerun to build from source.", file=sys.stderr)
        return 1
    print(f"mmcv {installed} with compiled ops is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
