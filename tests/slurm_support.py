"""Shared support for the tests that run against a real Slurm cluster (``tests/test_slurm_*.py``).

The cluster is the one ``ci/slurm_up.sh`` brings up (see docs/slurm-ci.md). Nothing here mocks
Slurm: every helper shells out to the real ``sinfo``/``sbatch``/``sacct``/``scontrol``.

Skip policy
    On a machine without Slurm (no ``sinfo``), or with Slurm installed but not up, every Slurm test
    is *skipped* with the reason. With ``SF_MAMBA_REQUIRE_SLURM=1`` (set by ``.ci/run``) the same
    condition is a *failure* instead, so CI cannot go green with the Slurm tests silently skipped.
    The same rule applies to the "a piece of the project is missing" skips (:func:`require`).

Usage in a test module: the fixtures (``slurm_cluster``, ``slurm_jobs``, ``digits_data``) come from
this module loaded as a pytest plugin (``pytest_plugins`` in tests/conftest.py); helpers are imported
by name (pytest puts tests/ on the import path)::

    from slurm_support import sacct_job, wait_until
    pytestmark = [pytest.mark.slurm]

Every submission made here names its executor explicitly (``submitit.SlurmExecutor``, or
snakemake's ``--executor slurm`` via the slurm profile): submitit's ``AutoExecutor`` would pick
Slurm merely because ``sinfo`` exists, which is exactly what the non-Slurm tests must never do.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # submitit is in the ``pipeline`` extra; the Slurm tests importorskip it.
    import submitit

    _Checkpointable = submitit.helpers.Checkpointable
except ImportError:  # pragma: no cover - only without the pipeline extra
    submitit = None
    _Checkpointable = object

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
REQUIRE_ENV = "SF_MAMBA_REQUIRE_SLURM"
STATE_DIR = Path(os.environ.get("SF_SLURM_STATE", "/tmp/sf-mamba-slurm"))


def required() -> bool:
    """True where the Slurm tests must run (CI): a skip becomes a failure."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1 but the Slurm test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require(condition: bool, reason: str) -> None:
    """Skip (or, under SF_MAMBA_REQUIRE_SLURM=1, fail) unless ``condition``."""
    if not condition:
        skip_or_fail(reason)


# ---------------------------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cluster:
    partition: str
    account: str | None
    node: str
    gpus: int
    cpus: int
    state_dir: Path

    @property
    def default_resources(self) -> list[str]:
        """``--default-resources`` items that point a profile at this cluster."""
        res = [f"slurm_partition={self.partition}"]
        if self.account:
            res.append(f"slurm_account={self.account}")
        return res


def _run(cmd: list[str], timeout: float = 20, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def _read_env_file() -> dict[str, str]:
    env: dict[str, str] = {}
    path = STATE_DIR / "env"
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


@functools.lru_cache(maxsize=None)
def probe_cluster() -> tuple[Cluster | None, str]:
    """(cluster, "") when a usable cluster is up, else (None, why not)."""
    hint = "bring it up with `sudo bash ci/slurm_up.sh` (docs/slurm-ci.md)"
    if shutil.which("sinfo") is None:
        return None, f"Slurm is not installed here (no `sinfo` on PATH); {hint}"
    try:
        out = _run(["sinfo", "-h", "-N", "-o", "%N|%P|%T|%G|%c"], timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return None, f"`sinfo` timed out: slurmctld is not answering; {hint}"
    if out.returncode != 0:
        return None, f"Slurm is not up (`sinfo` rc={out.returncode}: {out.stderr.strip()[:200]}); {hint}"
    nodes = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 4]
    usable = [n for n in nodes if n[2].rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return None, f"no schedulable Slurm node (sinfo: {out.stdout.strip()!r}); {hint}"
    try:
        sacct = _run(["sacct", "-n", "-X", "-S", "now-1hours"], timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return None, "`sacct` timed out: slurmdbd is not answering"
    if sacct.returncode != 0:
        # Both snakemake's slurm plugin and submitit poll sacct; without accounting snakemake hangs
        # forever (docs/slurm-ci.md), so refuse to run rather than hang CI.
        return None, f"Slurm accounting is off (`sacct`: {sacct.stderr.strip()[:200]}); run ci/slurm_up.sh with SF_SLURM_DBD=1"
    envf = _read_env_file()
    node, partition, _, gres, cpus = usable[0]
    partition = envf.get("SF_SLURM_PARTITION") or partition.rstrip("*")
    gpus = 0
    for item in gres.split(","):
        if item.startswith("gpu:"):
            gpus = int(item.split(":")[-1].split("(")[0])
    account = os.environ.get("SF_SLURM_ACCOUNT", envf.get("SF_SLURM_ACCOUNT")) or None
    return Cluster(partition=partition, account=account, node=node, gpus=gpus, cpus=int(cpus),
                   state_dir=STATE_DIR), ""


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    cluster, why = probe_cluster()
    if cluster is None:
        skip_or_fail(why)
    return cluster


# ---------------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------------
def max_job_id() -> int:
    """Highest job id Slurm has handed out so far (0 if none)."""
    ids = [0]
    q = _run(["squeue", "-h", "-o", "%A"], timeout=15, check=False).stdout.split()
    a = _run(["sacct", "-n", "-X", "-a", "-P", "-o", "JobIDRaw", "-S", "now-2days"], timeout=15, check=False).stdout.split()
    for tok in q + a:
        if tok.isdigit():
            ids.append(int(tok))
    return max(ids)


def queued_jobs() -> dict[int, str]:
    """{job id: work dir} of every job still in the queue."""
    out = _run(["squeue", "-h", "-o", "%A|%Z"], timeout=15, check=False).stdout
    jobs = {}
    for line in out.splitlines():
        jid, _, wd = line.partition("|")
        if jid.strip().isdigit():
            jobs[int(jid)] = wd.strip()
    return jobs


def queued_job_ids() -> list[int]:
    return sorted(queued_jobs())


def _under(path: str, root: Path | None) -> bool:
    if root is None:
        return True
    root_s = str(root).rstrip("/")
    return path == root_s or path.startswith(root_s + "/")


@pytest.fixture
def slurm_jobs(slurm_cluster, tmp_path):
    """Yields a set to which tests add the ids they submit. On teardown, cancels every job of this
    test still queued or running: the ids added, and any newer job whose working directory is under
    the test's ``tmp_path`` (snakemake/launcher submissions). Other users' jobs, and concurrent test
    processes' jobs, are left alone."""
    before = max_job_id()
    mine: set[int] = set()
    yield mine
    leftovers = [j for j, wd in queued_jobs().items() if j in mine or (j > before and _under(wd, tmp_path))]
    if leftovers:
        subprocess.run(["scancel", *map(str, leftovers)], capture_output=True, timeout=30)
        wait_until(lambda: not set(leftovers) & set(queued_job_ids()), timeout=30, what="scancel")


def job_ids_since(before: int, under: Path | None = None) -> list[int]:
    """Ids above ``before`` (accounting and queue), optionally only those whose working directory is
    under ``under`` (so that concurrent test processes do not see each other's jobs)."""
    out = _run(["sacct", "-n", "-X", "-a", "-P", "-o", "JobIDRaw,WorkDir", "-S", "now-2days"], timeout=15,
               check=False).stdout
    ids = set()
    for line in out.splitlines():
        jid, _, wd = line.partition("|")
        if jid.isdigit() and int(jid) > before and _under(wd, under):
            ids.add(int(jid))
    ids |= {j for j, wd in queued_jobs().items() if j > before and _under(wd, under)}
    return sorted(ids)


def sacct_job(job_id: int | str, fields: str = "JobIDRaw,JobName,State,ExitCode,AllocTRES,Account,Partition,NodeList",
              duplicates: bool = False) -> list[dict[str, str]]:
    """Allocation rows (``-X``) for one job, as dicts. ``duplicates`` adds requeued records (``-D``)."""
    cmd = ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", fields]
    if duplicates:
        cmd.append("-D")
    out = _run(cmd, timeout=15).stdout
    keys = [f.split("%")[0] for f in fields.split(",")]
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]


def scontrol_job(job_id: int | str) -> dict[str, str]:
    out = _run(["scontrol", "-o", "show", "job", str(job_id)], timeout=15, check=False).stdout
    fields: dict[str, str] = {}
    for tok in out.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            fields[k] = v
    return fields


def job_state(job_id: int | str) -> str:
    """Current state: scontrol while the controller remembers the job, else sacct."""
    st = scontrol_job(job_id).get("JobState")
    if st:
        return st
    rows = sacct_job(job_id, "State")
    return rows[-1]["State"].split()[0] if rows else "UNKNOWN"


def wait_until(pred, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_job_state(job_id: int | str, states: set[str], timeout: float) -> str:
    return wait_until(lambda: (s := job_state(job_id)) in states and s, timeout,
                      f"job {job_id} to reach {sorted(states)}")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for driver subprocesses (snakemake, sf_mamba launch): the venv first on PATH
    (jobs are started with --export=ALL and must find the same snakemake/python on the node),
    no inherited SLURM_* job context and no SNAKEMAKE_PROFILE default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "SNAKEMAKE_PROFILE"}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def sf_mamba_cmd(*args: str) -> list[str]:
    """``sf_mamba ARGS`` with this interpreter (not whatever ``sf_mamba`` is first on PATH)."""
    return [sys.executable, "-m", "sf_mamba", *args]


@pytest.fixture(scope="session")
def digits_data(digits, slurm_cluster) -> Path:
    """The session's offline digits set (tests/conftest.py), once a cluster is up."""
    return digits


# ---------------------------------------------------------------------------------------------
# a tiny Checkpointable callable (independent of the trainer), used by test_slurm_submitit.py
# ---------------------------------------------------------------------------------------------
def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def install_requeue_guard() -> None:
    """The launcher's guard (``sf_mamba.launch.submit.install_requeue_guard``), used by StepTask too."""
    from sf_mamba.launch.submit import install_requeue_guard as guard

    guard()


class StepTask(_Checkpointable):
    """Deterministic "training": ``steps`` steps of ``step_s`` seconds, a checkpoint written
    atomically after every step, ``metrics.json`` written last. ``__call__`` always resumes from
    the on-disk checkpoint (it must not rely on ``checkpoint()`` having been called: a Slurm-level
    requeue restarts from the originally pickled object). Every start appends one line to
    ``attempts.jsonl`` with the Slurm job id, ``SLURM_RESTART_COUNT`` and the step it resumed at.
    """

    def __init__(self, run_dir: str | os.PathLike, steps: int = 8, step_s: float = 1.0) -> None:
        self.run_dir = str(run_dir)
        self.steps = steps
        self.step_s = step_s

    def __call__(self) -> dict:
        install_requeue_guard()
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = run_dir / "ckpt.json"
        state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "acc": 1}
        with open(run_dir / "attempts.jsonl", "a") as f:
            f.write(json.dumps({
                "job_id": os.environ.get("SLURM_JOB_ID"),
                "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                "start_step": state["step"],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            }) + "\n")
        while state["step"] < self.steps:
            time.sleep(self.step_s)
            state["acc"] = (state["acc"] * 1103515245 + 12345 + state["step"]) % 2147483648
            state["step"] += 1
            _atomic_write_json(ckpt, state)
        metrics = {"steps": state["step"], "acc": state["acc"]}
        _atomic_write_json(run_dir / "metrics.json", metrics)
        return metrics


def job_environment() -> dict:
    """Submitted as a plain function: what the job sees of its allocation."""
    return {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_PARTITION",
                                           "SLURM_JOB_ACCOUNT", "SLURM_GPUS_ON_NODE")}


def slurm_executor(folder: Path, cluster: Cluster, **params):
    """An explicitly named ``submitit.SlurmExecutor`` (never AutoExecutor) pointed at the cluster.
    ``tests/`` goes on the jobs' PYTHONPATH so they can unpickle callables defined in this module."""
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=params.pop("max_num_timeout", 3))
    defaults = dict(partition=cluster.partition, time=10, cpus_per_task=1, mem="1G",
                    signal_delay_s=30, setup=[f"export PYTHONPATH={TESTS_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"])
    if cluster.account:
        defaults["account"] = cluster.account
    defaults.update(params)
    ex.update_parameters(**defaults)
    return ex
