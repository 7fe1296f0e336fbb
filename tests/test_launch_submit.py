"""`sf_mamba launch`: explicit executor, run key, idempotence, reattach, requeue semantics."""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from sf_mamba.launch import submit as L  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser()
    L.add_arguments(parser)
    return parser.parse_args(argv)


def fake_cli(calls):
    """Stands in for `sf_mamba <cmd>`: writes the metrics file named by --out."""
    def run(argv):
        calls.append(list(argv))
        out = Path(argv[argv.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / "meta.json").write_text(json.dumps({"git": {"sha": "x"}}))
        out.write_text(json.dumps({"top1": 42.0, "argv": argv}))
        return 0
    return run


def test_debug_run_publishes_metrics_and_records_job(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(L, "_run_cli", fake_cli(calls))
    run = tmp_path / "run"
    args = parse(["--cluster", "debug", "--run-dir", str(run), "--", "train", "--out", "{work_dir}/metrics.json"])
    assert L.main(args) == 0
    assert json.loads((run / "metrics.json").read_text())["top1"] == 42.0
    assert (run / "meta.json").exists()
    record = json.loads((run / "launch.json").read_text())
    assert record["cluster"] == "debug" and record["argv"][0] == "train"
    assert calls[0][2] == str(run / "work" / record["key"] / "metrics.json")   # {work_dir} substituted


def test_second_launch_with_same_key_submits_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(L, "_run_cli", fake_cli(calls))
    run = tmp_path / "run"
    argv = ["--cluster", "debug", "--run-dir", str(run), "--", "x", "--out", "{work_dir}/metrics.json"]
    assert L.main(parse(argv)) == 0
    (run / "metrics.json").unlink()                      # Snakemake deletes the declared output
    monkeypatch.setattr(L, "make_executor", lambda *a: pytest.fail("must not submit again"))
    assert L.main(parse(argv)) == 0
    assert (run / "metrics.json").exists() and len(calls) == 1


def test_changed_recipe_gets_a_fresh_work_dir(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(L, "_run_cli", fake_cli(calls))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 1\n")
    run = tmp_path / "run"
    argv = ["--cluster", "debug", "--run-dir", str(run), "--hash-file", str(recipe), "--",
            "x", "--out", "{work_dir}/metrics.json"]
    L.main(parse(argv))
    key1 = json.loads((run / "launch.json").read_text())["key"]
    recipe.write_text("lr: 2\n")                         # an edited experiment never resumes a stale checkpoint
    L.main(parse(argv))
    key2 = json.loads((run / "launch.json").read_text())["key"]
    assert key1 != key2 and len(calls) == 2
    assert (run / "work" / key1).is_dir() and (run / "work" / key2).is_dir()


def test_run_key_depends_on_arguments_and_file_content(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("a: 1")
    k = L.run_key(["train", "--set=x=1"], [f])
    assert k == L.run_key(["train", "--set=x=1"], [f])
    assert k != L.run_key(["train", "--set=x=2"], [f])
    f.write_text("a: 2")
    assert k != L.run_key(["train", "--set=x=1"], [f])


def test_failed_job_returns_nonzero_and_writes_no_output(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "_run_cli", lambda argv: 3)
    run = tmp_path / "run"
    assert L.main(parse(["--cluster", "debug", "--run-dir", str(run), "--", "x"])) == 1
    assert not (run / "metrics.json").exists()


def test_reattach_waits_for_a_live_local_job(tmp_path, monkeypatch):
    """A driver restarted while its local job still runs waits for it instead of submitting twice."""
    run = tmp_path / "run"
    argv = ["--cluster", "local", "--run-dir", str(run), "--poll-s", "0.1", "--", "x", "--out",
            "{work_dir}/metrics.json"]
    args = parse(argv)
    key = L.run_key(args.command[1:] if args.command[0] == "--" else args.command, [])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    run.mkdir()
    (run / "launch.json").write_text(json.dumps({"key": key, "cluster": "local", "job_id": str(proc.pid)}))

    def finish():  # the "old" job writes its result before it exits
        time.sleep(0.5)
        out = run / "work" / key / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"top1": 1.0}))

    threading.Thread(target=finish).start()
    monkeypatch.setattr(L, "make_executor", lambda *a: pytest.fail("must reattach, not submit"))
    reaper = threading.Thread(target=proc.wait)
    reaper.start()
    assert L.main(args) == 0
    reaper.join()
    assert (run / "metrics.json").exists()


def test_reattach_to_a_running_slurm_job(tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = parse(["--cluster", "slurm", "--run-dir", str(run), "--", "x", "--out", "{work_dir}/metrics.json"])
    key = L.run_key(args.command[1:], [])
    run.mkdir()
    (run / "launch.json").write_text(json.dumps({"key": key, "cluster": "slurm", "job_id": "1234"}))
    seen = {}

    class FakeSlurmJob:
        def __init__(self, folder, job_id):
            seen["job_id"] = job_id
            self.job_id = job_id
            self.state = "RUNNING"

        def result(self):
            out = run / "work" / key / "metrics.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}")

    monkeypatch.setattr(submitit, "SlurmJob", FakeSlurmJob)
    monkeypatch.setattr(L, "make_executor", lambda *a: pytest.fail("must reattach, not submit"))
    assert L.main(args) == 0
    assert seen["job_id"] == "1234" and (run / "metrics.json").exists()


def test_finished_slurm_job_without_output_is_resubmitted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = parse(["--cluster", "slurm", "--run-dir", str(run), "--", "x"])
    key = L.run_key(args.command[1:], [])
    run.mkdir()
    (run / "launch.json").write_text(json.dumps({"key": key, "cluster": "slurm", "job_id": "9"}))

    class Dead:
        def __init__(self, folder, job_id):
            self.state = "FAILED"

    monkeypatch.setattr(submitit, "SlurmJob", Dead)
    submitted = []

    class Exe:
        def submit(self, fn):
            submitted.append(fn)
            raise RuntimeError("stop here")

    monkeypatch.setattr(L, "make_executor", lambda *a: Exe())
    with pytest.raises(RuntimeError, match="stop here"):
        L.main(args)
    assert len(submitted) == 1


def test_checkpoint_requeues_the_same_command():
    job = L.CliJob(["train", "--config", "c.yaml"], "/x/metrics.json")
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function.argv == job.argv and delayed.function.expect == job.expect


def fake_slurm_tools(tmp_path, monkeypatch, tools=("srun", "sinfo", "sbatch")):
    """Failing stand-ins for the Slurm tools, first on PATH: submitit's SlurmExecutor only checks
    that `srun` exists when it is built, so its parameters can be inspected where Slurm never was."""
    fake_bin = tmp_path / "fake-slurm-bin"
    fake_bin.mkdir()
    for tool in tools:
        (fake_bin / tool).write_text("#!/bin/sh\necho fake slurm >&2\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    return fake_bin


def test_slurm_parameters_are_explicit(tmp_path, monkeypatch):
    fake_slurm_tools(tmp_path, monkeypatch)
    args = parse(["--cluster", "slurm", "--run-dir", str(tmp_path), "--gpus", "8", "--nodes", "2",
                  "--cpus", "8", "--mem-gb", "100", "--timeout-min", "2880", "--partition", "gpu",
                  "--account", "proj", "--slurm-extra", "mail-type=FAIL", "--", "x"])
    ex = L.make_executor(args, tmp_path / "submitit")
    p = ex._executor.parameters
    assert p["partition"] == "gpu" and p["account"] == "proj" and p["gpus_per_node"] == 8
    assert p["ntasks_per_node"] == 8 and p["nodes"] == 2 and p["time"] == 2880
    assert p["signal_delay_s"] == 120 and p["additional_parameters"] == {"mail-type": "FAIL"}
    assert ex._executor.max_num_timeout == 30


def test_slurm_cluster_without_slurm_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """`--cluster slurm` where no `srun` is reachable: exit 2 and one line, not submitit's traceback."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    from sf_mamba.cli import main as cli_main

    run = tmp_path / "run"
    rc = cli_main(["launch", "--cluster", "slurm", "--run-dir", str(run), "--", "x", "--out", "{work_dir}/m.json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == ["sf_mamba launch: error: --cluster slurm needs Slurm's `srun` on PATH and there is none "
                   "(run on a Slurm login node, or use --cluster local)"]
    assert not (run / "launch.json").exists() and not (run / "m.json").exists()


def test_local_executor_ignores_an_installed_cluster(tmp_path, monkeypatch):
    """With srun/sinfo on PATH, `--cluster local` still runs a local subprocess (no auto-detection)."""
    fake_slurm_tools(tmp_path, monkeypatch)
    ex = L.make_executor(parse(["--cluster", "local", "--run-dir", str(tmp_path), "--", "x"]), tmp_path / "s")
    assert ex.cluster == "local"
    assert submitit.AutoExecutor.which() == "slurm"      # what auto-detection would have picked


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_executor_end_to_end(tmp_path):
    """A real `sf_mamba launch --cluster local` subprocess job (a tiny fold sweep)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sf_mamba", "launch", "--cluster", "local", "--run-dir", str(run),
           "--timeout-min", "5", "--poll-s", "0.2", "--", "fold-sweep", "--out", "{work_dir}/metrics.json",
           "--batch-sizes", "2", "--lengths", "4", "--channels", "2", "--folds", "1", "2", "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((run / "metrics.json").read_text())
    assert result["all_equal"] is True
    assert list((run / "submitit").glob("*_log.out"))
