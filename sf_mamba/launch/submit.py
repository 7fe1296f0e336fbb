"""``sf_mamba launch``: run one ``sf_mamba`` subcommand through submitit and wait for it.

Used by the Snakemake rules that train (``localrule: True``): the rule waits here while the job runs
on Slurm (``--cluster slurm``), as a local subprocess (``local``) or in this process (``debug``).
The executor is always named explicitly: submitit's AutoExecutor would otherwise pick Slurm as soon
as ``srun`` is on PATH, and a laptop run must not change behaviour when a cluster is installed.

Layout of one run (``--run-dir R``)::

    R/launch.json          key, argv, executor and job id (for reattaching), written at submission
    R/submitit/            submitit's pickles and logs (%j_0_log.out/err)
    R/work/<key>/          the subcommand's own directory: checkpoints, its metrics.json, meta.json
    R/metrics.json         copied from work/<key>/ when the job has succeeded: the declared output
    R/meta.json            provenance, copied alongside

``<key>`` hashes the argument template and the content of every ``--hash-file`` (the recipe files),
so a changed experiment never resumes a stale checkpoint, while a rerun of the same experiment
(after a driver restart, a preemption or a timeout) resumes where it stopped: the subcommand's own
auto-resume does that. Checkpoints are never declared outputs, so Snakemake never deletes them.

Idempotent and reattaching, in this order:
1. ``work/<key>/<output>`` exists: copy it up and exit 0 (nothing is submitted);
2. ``launch.json`` names a job of the same key that is still alive (Slurm: queued/running/requeued;
   local: the process still exists): wait for that job instead of submitting a duplicate;
3. otherwise submit a new job, write ``launch.json`` at once, wait, copy the output up.

In the subcommand's arguments, ``{work_dir}`` is replaced by ``R/work/<key>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sf_mamba.utils.cli import fail
from sf_mamba.utils.io import atomic_write_json

CLUSTERS = ("slurm", "local", "debug")
# sacct states after which a Slurm job will not run again by itself.
SLURM_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
               "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
WORK_PLACEHOLDER = "{work_dir}"
COPIED_ALONGSIDE = ("meta.json", "config.yaml")


class LaunchError(RuntimeError):
    """The job failed or did not write its output."""


def _run_cli(argv: list[str]) -> int:
    from sf_mamba.cli import main as cli_main

    try:
        return cli_main(argv)
    except BaseException as err:
        # submitit's requeue handler ends the job with SystemExit; cleanup code on the way up (a
        # zip writer, a DataLoader) can replace it with another error. The exit is what happened.
        cause = err
        while cause is not None:
            if isinstance(cause, SystemExit):
                raise cause from None
            cause = cause.__context__
        raise


def install_requeue_guard() -> None:
    """Make submitit's requeue-on-signal path race-free; call at the start of a job.

    On the timeout/preemption signal submitit's handler checkpoints, runs ``scontrol requeue <own
    job id>`` *from inside the job*, then exits. The requeue kills every process of the job, that
    ``scontrol`` included; when the kill wins the race, ``check_call`` raises
    ``CalledProcessError`` with a negative status inside the handler and the job records an error
    although Slurm has requeued it. A requeue command killed by a signal means the requeue
    happened: exit as submitit does after a successful one.
    """
    import signal
    import subprocess

    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}")
    previous = signal.getsignal(sig)
    if not callable(previous) or getattr(previous, "_sf_mamba_requeue_guard", False):
        return

    def handler(signum, frame):
        try:
            previous(signum, frame)
        except subprocess.CalledProcessError as err:
            cmd = list(err.cmd) if isinstance(err.cmd, (list, tuple)) else str(err.cmd).split()
            if "requeue" in cmd and err.returncode < 0:
                print(f"requeue command {cmd} was killed by the requeue itself (signal "
                      f"{-err.returncode}): the job is requeued; exiting", file=sys.stderr, flush=True)
                sys.exit(-1)
            raise

    handler._sf_mamba_requeue_guard = True
    signal.signal(sig, handler)


try:  # submitit is part of the 'pipeline' extra; the pure helpers below work without it.
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised only without submitit
    _Checkpointable = object  # type: ignore[assignment,misc]


class CliJob(_Checkpointable):  # type: ignore[misc,valid-type]
    """Runs ``sf_mamba <argv>`` in the job; requeued as-is on preemption or timeout.

    ``Checkpointable.checkpoint`` resubmits this same object; the subcommand resumes from its own
    checkpoint in the work directory. A Slurm-level requeue (NODE_FAIL) restarts from the original
    pickle without calling ``checkpoint()``, which is the same thing here: the state lives on disk.
    """

    def __init__(self, argv: Sequence[str], expect: str | os.PathLike):
        self.argv = list(argv)
        self.expect = str(expect)

    def __call__(self) -> dict:
        install_requeue_guard()
        expect = Path(self.expect)
        if not expect.exists():
            print(f"[sf_mamba launch] running: sf_mamba {' '.join(self.argv)}", flush=True)
            rc = _run_cli(self.argv)
            if rc != 0:
                raise LaunchError(f"sf_mamba {self.argv[0]} exited with status {rc}")
        if not expect.exists():
            raise LaunchError(f"sf_mamba {self.argv[0]} succeeded but did not write {expect}")
        with open(expect, encoding="utf-8") as fh:
            return json.load(fh)


def run_key(argv: Sequence[str], hash_files: Sequence[str | os.PathLike] = ()) -> str:
    """12 hex digits over the argument template and the bytes of ``hash_files`` (order-free)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(argv)).encode())
    for path in sorted(str(p) for p in hash_files):
        h.update(b"\0" + path.encode() + b"\0")
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _publish(work: Path, run_dir: Path, output: str) -> Path:
    """Copy the job's output (last) and its sidecars from ``work`` up into ``run_dir``."""
    for name in COPIED_ALONGSIDE:
        if (work / name).exists() and name != output:
            shutil.copyfile(work / name, run_dir / name)
    target = run_dir / output
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(work / output, tmp)
    os.replace(tmp, target)
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_executor(args: argparse.Namespace, folder: Path):
    """A submitit executor for ``args.cluster``, always named explicitly."""
    import submitit

    if args.cluster not in CLUSTERS:
        fail(f"--cluster must be one of {CLUSTERS}, got {args.cluster!r}")
    if args.cluster == "slurm" and shutil.which("srun") is None:  # submitit would raise a traceback
        fail("--cluster slurm needs Slurm's `srun` on PATH and there is none "
             "(run on a Slurm login node, or use --cluster local)")
    kwargs = {}
    if args.cluster in ("slurm", "local"):
        kwargs[f"{args.cluster}_max_num_timeout"] = args.max_num_timeout
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster, **kwargs)
    params: dict[str, Any] = {
        "timeout_min": args.timeout_min,
        "cpus_per_task": args.cpus,
        "gpus_per_node": args.gpus,
        "tasks_per_node": max(1, args.gpus),  # one process per GPU (the trainer reads JobEnvironment)
        "nodes": args.nodes,
        "name": args.job_name,
    }
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.cluster == "slurm":
        params["slurm_signal_delay_s"] = args.signal_delay_s
        for name in ("partition", "account", "qos", "constraint", "gres"):
            value = getattr(args, name)
            if value:
                params[f"slurm_{name}"] = value
        if args.gres:
            params.pop("gpus_per_node")  # one GPU flag only: --gres clusters reject --gpus
        extra = dict(kv.split("=", 1) for kv in args.slurm_extra)
        if extra:
            params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def _reattach(record: dict, folder: Path, log) -> Any | None:
    """A live job from ``launch.json``, or None if there is nothing to wait for."""
    job_id = str(record.get("job_id") or "")
    cluster = record.get("cluster")
    if not job_id:
        return None
    if cluster == "slurm":
        import submitit

        job = submitit.SlurmJob(folder=folder, job_id=job_id)
        state = str(job.state).split()[0].upper()
        if state in SLURM_FINAL:
            log(f"previous Slurm job {job_id} is {state}: submitting a new one")
            return None
        log(f"reattaching to Slurm job {job_id} (state {state})")
        return job
    if cluster == "local" and job_id.isdigit() and _pid_alive(int(job_id)):
        log(f"previous local job (pid {job_id}) is still running: waiting for it")
        return ("pid", int(job_id))
    return None


def launch(args: argparse.Namespace, log=None) -> int:
    log = log or (lambda msg: print(f"[sf_mamba launch] {msg}", flush=True))
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        fail("give the subcommand after '--', e.g. -- train --config X")
    if argv[0] == "launch":
        fail("refusing to launch 'launch' itself")
    for path in args.hash_file:
        if not Path(path).is_file():
            fail(f"--hash-file {path!r} is not a file")
    run_dir = Path(args.run_dir)
    key = run_key(argv, args.hash_file)
    work = run_dir / "work" / key
    job_argv = [a.replace(WORK_PLACEHOLDER, str(work)) for a in argv]
    expect = work / args.output
    folder = run_dir / "submitit"
    record_path = run_dir / "launch.json"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"--run-dir {str(run_dir)!r} cannot be created: {err.strerror or err}")

    if expect.exists():
        log(f"{expect} already exists: nothing to run")
        _publish(work, run_dir, args.output)
        return 0

    previous = _read_json(record_path)
    job = None
    if previous and previous.get("key") == key:
        job = _reattach(previous, folder, log)
    if isinstance(job, tuple):  # a local process from an earlier driver: poll until it ends
        while _pid_alive(job[1]):
            time.sleep(args.poll_s)
        job = None
        if expect.exists():
            _publish(work, run_dir, args.output)
            return 0
    if job is None:
        work.mkdir(parents=True, exist_ok=True)
        executor = make_executor(args, folder)
        job = executor.submit(CliJob(job_argv, expect))
        record = {"key": key, "argv": argv, "cluster": args.cluster, "job_id": str(job.job_id),
                  "folder": str(folder), "work_dir": str(work), "output": args.output,
                  "submissions": int((previous or {}).get("submissions", 0)) + 1}
        atomic_write_json(record_path, record)
        log(f"submitted {args.cluster} job {job.job_id}: sf_mamba {' '.join(job_argv)}")
    try:
        job.result()
    except Exception as err:  # submitit raises its own FailedJobError with the job's traceback
        log(f"job {getattr(job, 'job_id', '?')} failed: {err}")
        _tail_logs(job, log)
        return 1
    if not expect.exists():
        log(f"job finished but {expect} is missing")
        return 1
    target = _publish(work, run_dir, args.output)
    log(f"done: {target}")
    return 0


def _tail_logs(job, log, lines: int = 40) -> None:
    try:
        for path in (job.paths.stdout, job.paths.stderr):
            if Path(path).exists():
                text = Path(path).read_text(errors="replace").splitlines()[-lines:]
                log(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
    except Exception:  # noqa: BLE001 - best effort diagnostics only
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", required=True, choices=CLUSTERS,
                        help="submitit executor, named explicitly (never auto-detected)")
    parser.add_argument("--run-dir", required=True, help="run directory (holds launch.json, work/)")
    parser.add_argument("--output", default="metrics.json",
                        help="file the subcommand writes last in {work_dir}; copied to the run dir")
    parser.add_argument("--hash-file", action="append", default=[],
                        help="file whose content is part of the run key (repeatable)")
    parser.add_argument("--timeout-min", type=int, default=60,
                        help="job time limit in minutes (explicit; submitit's local default is 2)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (multi-node DDP)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per task")
    parser.add_argument("--mem-gb", type=float, default=0, help="memory per node (0 = cluster default)")
    parser.add_argument("--partition", default="", help="Slurm partition")
    parser.add_argument("--account", default="", help="Slurm account")
    parser.add_argument("--qos", default="", help="Slurm QoS")
    parser.add_argument("--constraint", default="", help="Slurm node constraint")
    parser.add_argument("--gres", default="", help="Slurm --gres (instead of --gpus), e.g. gpu:a100:1")
    parser.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra #SBATCH parameter (repeatable), e.g. mail-type=FAIL")
    parser.add_argument("--max-num-timeout", type=int, default=30,
                        help="requeues after a timeout (preemptions are always requeued)")
    parser.add_argument("--signal-delay-s", type=int, default=120,
                        help="seconds before the time limit at which the job is signalled")
    parser.add_argument("--job-name", default="sf_mamba")
    parser.add_argument("--poll-s", type=float, default=30.0, help="poll interval when reattaching")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- SUBCOMMAND ARGS...; '{work_dir}' is replaced by the work directory")


def main(args: argparse.Namespace) -> int:
    for kv in args.slurm_extra:
        if "=" not in kv:
            fail(f"--slurm-extra expects KEY=VALUE, got {kv!r}")
    return launch(args)


if __name__ == "__main__":
    from sf_mamba.cli import main as _cli_main

    sys.exit(_cli_main(["launch", *sys.argv[1:]]))
