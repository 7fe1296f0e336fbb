"""End to end on real offline data: `sf_mamba data` + `sf_mamba train --config smoke` reaches accuracy far
above chance on the held-out split, `sf_mamba eval` reproduces the run's numbers from the checkpoint,
and bad input fails clearly without writing anything.

Accuracy bar: >= 80 % top-1 on the 360 held-out digits (chance is 10 %); the smoke run typically
reaches ~95 %.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sf_mamba.cli import main as cli



@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_run_learns_digits_and_eval_matches(tmp_path, digits):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sf_mamba", "train", "--config", "smoke", "--run-dir", str(run),
           "--data-dir", str(digits)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=850)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["top1"] >= 80.0, metrics            # chance is 10 %
    assert metrics["top5"] >= 95.0
    assert metrics["params"] > 0 and not {"macs", "throughput"} & set(metrics)   # bench/flops measure those
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    assert printed["top1"] == metrics["top1"]

    # `sf_mamba eval` on the checkpoint gives the same numbers (same val preprocessing)
    out = subprocess.run([sys.executable, "-m", "sf_mamba", "eval", str(run / "checkpoints" / "last.pth"),
                          "--data-dir", str(digits), "--workers", "0", "--out", str(tmp_path / "eval.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["count"] == 360
    assert abs(ev["top1"] - metrics["top1"]) < 1e-9 and abs(ev["top5"] - metrics["top5"]) < 1e-9
    assert ev["data_config"]["interpolation"] == "bicubic" and ev["data_config"]["crop_pct"] == 1.0
    out = subprocess.run([sys.executable, "-m", "sf_mamba", "eval", str(run / "checkpoints" / "last.pth"),
                          "--data-dir", str(digits), "--workers", "0", "--use-ema"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert abs(json.loads(out.stdout.strip().splitlines()[-1])["top1"] - metrics["ema_top1"]) < 1e-9


def _args(run: Path, data: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", "smoke", "--run-dir", str(run), "--data-dir", str(data)]
    for s in sets:
        argv += ["--set", s]
    return argv


@pytest.mark.parametrize("data_kind, sets, message", [
    ("missing", (), "does not exist"),
    ("flat", (), "no train/ sub-folder"),
    ("ok", ("model.name=sf_mamba_xxl",), "unknown model 'sf_mamba_xxl'"),
    ("ok", ("optim.lrr=1e-3",), "unknown config key 'optim.lrr'"),
    ("ok", ("trian.batch_size=2",), "unknown config key 'trian'"),
    ("ok", ("train.batch_size=0",), "train.batch_size"),
    ("ok", ("train.batch_size=5000",), "fewer than one batch"),
    ("ok", ("optim.opt=nosuch",), "cannot build optimizer 'nosuch'"),
    ("ok", ("sched.name=nosuch",), "cannot build scheduler 'nosuch'"),
    ("ok", ("model.kwargs.scan=bogus",), "rejected model.kwargs"),
    ("ok", ("model.kwargs.no_such_kwarg=1",), "rejected model.kwargs"),
])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, digits, capsys, data_kind, sets, message):
    data = {"missing": tmp_path / "nope", "flat": digits / "train", "ok": digits}[data_kind]
    run = tmp_path / "run"
    assert cli(_args(run, data, *sets)) == 2
    err = capsys.readouterr().err
    assert message in err and "error" in err
    assert not run.exists()


@pytest.mark.parametrize("case, message", [
    ("run dir under a file", "is not a directory"),
    ("run dir is a file", "exists and is not a directory"),
    ("corrupt checkpoint", "is not a readable checkpoint"),
    ("empty checkpoint", "is not a readable checkpoint"),
    ("config file is not a mapping", "must hold a mapping"),
    ("config file is not YAML", "is not valid YAML: not UTF-8"),
    ("config file has a YAML syntax error", "is not valid YAML"),
])
def test_bad_files_fail_clearly_and_change_nothing(tmp_path, digits, capsys, case, message):
    """Wrong file types, unwritable output and a corrupt checkpoint: one line naming the problem,
    exit 2, no traceback, and nothing written or changed."""
    import yaml

    from sf_mamba.train.config import load_config

    run, config = tmp_path / "run", "smoke"
    if case == "run dir under a file":
        (tmp_path / "a_file").write_text("x")
        run = tmp_path / "a_file" / "run"
    elif case == "run dir is a file":
        run.write_text("x")
    elif case.endswith("checkpoint"):          # a run dir of this very config, its checkpoint damaged
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(load_config("smoke", [f"data.dir={digits}"])))
        (run / "checkpoints" / "last.pth").write_bytes(b"" if case.startswith("empty") else b"not a torch file")
    elif case == "config file is not a mapping":
        config = str(tmp_path / "list.yaml")
        (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    elif case == "config file has a YAML syntax error":
        config = str(tmp_path / "broken.yaml")
        (tmp_path / "broken.yaml").write_text("optim:\n  lr: [1e-3\n")
    else:
        config = str(tmp_path / "image.yaml")
        (tmp_path / "image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n: : {[")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv = ["train", "--config", config, "--run-dir", str(run), "--data-dir", str(digits)]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sf_mamba train: error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_unknown_config_file_and_bad_override_syntax(tmp_path, digits, capsys):
    assert cli(["train", "--config", "no_such_config", "--run-dir", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(["train", "--config", "smoke", "--run-dir", str(tmp_path / "r"), "--set", "optim.lr"]) == 2
    assert "section.key=value" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_overrides_and_print_config(tmp_path, capsys):
    import yaml

    assert cli(["train", "--config", "smoke", "--run-dir", str(tmp_path / "r"), "--print-config",
                "--set", "optim.lr=1e-3", "sched.epochs=3", "model.kwargs.scan=uni"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 1e-3 and cfg["sched"]["epochs"] == 3
    assert cfg["model"]["kwargs"] == {"window_size": [8, 8, 2, 1], "scan": "uni"}
    assert not (tmp_path / "r").exists()


def test_recipe_configs_resolve():
    from sf_mamba.train.config import load_config

    t, b, l = load_config("imagenet_t"), load_config("imagenet_b"), load_config("imagenet_l")
    assert t["optim"]["opt"] == "lamb" and t["optim"]["lr"] == 5e-3 and t["optim"]["weight_decay"] == 0.05
    assert t["sched"]["epochs"] + t["sched"]["cooldown_epochs"] == 310 and t["sched"]["warmup_epochs"] == 20
    assert t["aug"]["auto_augment"] == "rand-m9-mstd0.5-inc1" and t["aug"]["reprob"] == 0.25
    assert (t["aug"]["mixup"], t["aug"]["cutmix"], t["aug"]["smoothing"]) == (0.8, 1.0, 0.1)
    assert t["ema"]["decay"] == 0.9998 and t["mesa"]["weight"] == 0.5
    assert load_config("imagenet_t2")["mesa"]["weight"] == 0.75
    assert load_config("imagenet_s")["mesa"]["weight"] == 1.0
    assert (b["optim"]["weight_decay"], b["sched"]["warmup_epochs"], b["mesa"]["weight"], b["mesa"]["start_ratio"]) \
        == (0.075, 35, 1.0, 0.3)
    assert (l["optim"]["weight_decay"], l["mesa"]["weight"]) == (0.12, 6.0)


def test_distributed_setup_single_process_and_torchrun_env(monkeypatch):
    from sf_mamba.train.distributed import setup_distributed

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_FOLDER", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    info = setup_distributed("cpu")
    assert (info.rank, info.world_size, info.source, info.distributed) == (0, 1, "single", False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = setup_distributed("cpu")
    assert (info.source, info.world_size) == ("torchrun", 1)


def test_eval_bad_input(tmp_path, digits, capsys):
    assert cli(["eval", str(tmp_path / "missing.pth"), "--data-dir", str(digits)]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(["eval", str(tmp_path / "missing.pth"), "--data-dir", str(tmp_path / "nodata")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_api_mesa_and_idempotence(tmp_path, digits):
    from sf_mamba.train.config import ConfigError
    from sf_mamba.train.trainer import load_config, run_training

    base = ["sched.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=32",
            "train.eval_batch_size=360", f"data.dir={digits}"]
    with pytest.raises(ConfigError, match="ema.enabled"):
        run_training(load_config("smoke", base + ["mesa.weight=1.0", "ema.enabled=false"]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    plain = run_training(load_config("smoke", base), tmp_path / "plain")
    # MESA from the start (start_ratio 0 -> active from epoch 2 on, epoch/epochs = 0.5 > 0)
    mesa = run_training(load_config("smoke", base + ["mesa.weight=1.0", "mesa.start_ratio=0.0"]), tmp_path / "mesa")
    assert mesa["train_loss"] != plain["train_loss"]   # the distillation term is in the loss
    again = run_training(load_config("smoke", base), tmp_path / "plain")
    assert again == plain
