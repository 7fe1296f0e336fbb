"""Run provenance for ``meta.json`` files (training runs, benchmarks, any result leaf).

``build_meta(config=..., seed=...)`` returns a JSON-able dict with: git SHA + dirty flag, the
canonical config hash, seed, Python/package versions, device name(s), hostname, Slurm job id and
requeue count (``SLURM_JOB_ID`` / ``SLURM_ARRAY_JOB_ID`` / ``SLURM_RESTART_COUNT``), and a UTC
timestamp. Every field degrades to ``None`` rather than raising (no git, no CUDA, ...).

``config_hash(cfg)`` is the SHA-256 of the canonical JSON (sorted keys, no whitespace) of ``cfg``;
two configs hash equal iff they are equal as JSON values.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["canonical_json", "config_hash", "git_info", "package_versions", "device_info",
           "slurm_info", "build_meta", "utc_now"]

DEFAULT_PACKAGES = ("torch", "torchvision", "timm", "numpy", "triton", "mamba-ssm", "sf-mamba",
                    "submitit", "snakemake", "mmsegmentation", "mmcv", "mmengine")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(cfg: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``cfg``."""
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{'sha', 'dirty', 'diff_sha256'}`` of the repo holding ``path`` (default: this package)."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    sha = _git(["rev-parse", "HEAD"], cwd)
    if sha is None:
        return {"sha": None, "dirty": None, "diff_sha256": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    dirty = bool(status) if status is not None else None
    diff_hash = None
    if dirty:
        diff = _git(["diff", "HEAD"], cwd) or ""
        diff_hash = hashlib.sha256(diff.encode()).hexdigest()
    return {"sha": sha, "dirty": dirty, "diff_sha256": diff_hash}


def package_versions(names: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(device: Any = None) -> dict[str, Any]:
    """Device name and accelerator details (CUDA name/count/capability, CUDA and cuDNN versions)."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    try:
        import torch
    except ImportError:
        return info
    info["torch_num_threads"] = torch.get_num_threads()
    cuda = torch.cuda.is_available()
    info["cuda_available"] = cuda
    dev_type = getattr(device, "type", device) if device is not None else ("cuda" if cuda else "cpu")
    if cuda:
        idx = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
        info.update({
            "device_name": torch.cuda.get_device_name(idx),
            "gpu_count": torch.cuda.device_count(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(idx))),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        })
    if str(dev_type) == "cpu" or not cuda:
        info["device_name"] = f"cpu ({info['cpu']}, {info['cpu_count']} cores)"
    return info


def slurm_info() -> dict[str, Any]:
    """Slurm job id and requeue count from the environment (``None`` outside Slurm)."""
    env = os.environ
    restart = env.get("SLURM_RESTART_COUNT")
    return {
        "job_id": env.get("SLURM_JOB_ID"),
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "restart_count": int(restart) if restart and restart.isdigit() else (0 if env.get("SLURM_JOB_ID") else None),
        "nodelist": env.get("SLURM_JOB_NODELIST"),
    }


def build_meta(config: Any = None, seed: int | None = None, device: Any = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance dict for ``meta.json``. ``extra`` entries are merged in last."""
    meta: dict[str, Any] = {
        "created_utc": utc_now(),
        "hostname": socket.gethostname(),
        "git": git_info(),
        "config_sha256": config_hash(config) if config is not None else None,
        "seed": seed,
        "versions": package_versions(),
        "device": device_info(device),
        "slurm": slurm_info(),
    }
    if extra:
        meta.update(extra)
    return meta
