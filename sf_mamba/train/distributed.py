"""Process-group set-up from torchrun's env or from submitit's ``JobEnvironment``.

``setup_distributed()`` looks, in order, for

1. torchrun / torch.distributed.launch: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (+ ``MASTER_ADDR``,
   ``MASTER_PORT``), and
2. a submitit job (``submitit.JobEnvironment()`` works inside one): global rank, local rank, world size
   and the first hostname as master; ``MASTER_PORT`` defaults to a port derived from the job id,

and initialises ``torch.distributed`` (NCCL with CUDA, gloo on CPU). Without either it returns a
single-process ``DistInfo`` and initialises nothing. It is idempotent.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"       # single | torchrun | submitit
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _from_env() -> tuple[int, int, int, str] | None:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun"
    return None


def _from_submitit() -> tuple[int, int, int, str] | None:
    if "SUBMITIT_FOLDER" not in os.environ and "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    try:
        import submitit

        job_env = submitit.JobEnvironment()
    except Exception:  # not inside a submitit job
        return None
    os.environ.setdefault("MASTER_ADDR", job_env.hostnames[0])
    job_id = "".join(c for c in str(job_env.job_id) if c.isdigit()) or "0"
    os.environ.setdefault("MASTER_PORT", str(20000 + int(job_id[-4:]) % 20000))
    return job_env.global_rank, job_env.num_tasks, job_env.local_rank, "submitit"


def setup_distributed(device_type: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from whichever launcher environment is present."""
    found = _from_env() or _from_submitit()
    if found is None:
        return DistInfo()
    rank, world, local_rank, source = found
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if world <= 1:
        return DistInfo(rank, world, local_rank, source, None)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        import datetime

        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, source, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
