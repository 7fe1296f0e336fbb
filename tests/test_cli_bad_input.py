"""Bad input ends in one clear line, exit 2, no traceback, no partial output: one table per subcommand.

(`train` has its own table beside the trainer's tests; the harness is tests/cli_harness.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_harness import BadInput, assert_bad_input
from sf_mamba.cli import SUBCOMMANDS

BLOCKER = "blocker"  # a regular file: any output path under it cannot be created


@pytest.fixture
def files(tmp_path):
    """Bad and good inputs shared by the tables, made in tmp_path."""
    (tmp_path / BLOCKER).write_text("a file, not a directory\n")
    (tmp_path / "not_a_checkpoint.pth").write_text("hello, I am text\n")
    (tmp_path / "a_directory.pth").mkdir()
    good = {"head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3)}
    torch.save(good, tmp_path / "small.pth")
    data = (tmp_path / "small.pth").read_bytes()
    (tmp_path / "corrupt.pth").write_bytes(data[: len(data) // 2])  # a torch.save cut short
    torch.save([1, 2, 3], tmp_path / "a_list.pth")
    (tmp_path / "notes.txt").write_text("not json\n")
    from PIL import Image

    for cls in ("a", "b", "c"):  # a valid val split (ImageFolder layout), so eval gets to the checkpoint
        (tmp_path / "images" / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / "val" / cls / "0.png")
    (tmp_path / "manifest.json").write_text("[]\n")
    return tmp_path


def out(tmp, name="out.json"):
    return tmp / BLOCKER / name


MODEL_CASES = [  # shared by bench and flops (the same --model / --model-kwargs / --out options)
    BadInput("unknown-model", lambda t: ["--model", "sf_mamba_nope"], ["unknown model 'sf_mamba_nope'", "sf_mamba_t"]),
    BadInput("unknown-kwarg", lambda t: ["--model", "sf_mamba_micro", "--model-kwargs", '{"sideways": 1}'],
             ["sf_mamba_micro rejects --model-kwargs", "sideways"]),
    BadInput("bad-kwarg-value", lambda t: ["--model", "sf_mamba_micro", "--model-kwargs", '{"scan": "sideways"}'],
             ["sf_mamba_micro rejects --model-kwargs", "scan must be one of"]),
    BadInput("kwargs-not-json", lambda t: ["--model", "sf_mamba_micro", "--model-kwargs", "{scan: uni}"],
             ["--model-kwargs is not JSON"]),
    BadInput("kwargs-not-object", lambda t: ["--model", "sf_mamba_micro", "--model-kwargs", '["uni"]'],
             ["--model-kwargs must be a JSON object"]),
    BadInput("unwritable-out", lambda t: ["--model", "sf_mamba_micro", "--out", out(t)],
             ["--out", "cannot be written"], lambda t: [out(t)]),
    BadInput("out-is-a-directory", lambda t: ["--model", "sf_mamba_micro", "--out", t],
             ["--out", "is a directory"]),
]


@pytest.mark.parametrize("case", [c.param() for c in MODEL_CASES])
def test_flops_bad_input(case, files, capsys):
    assert_bad_input(capsys, "flops", case, files)


@pytest.mark.parametrize("case", [c.param() for c in MODEL_CASES + [
    BadInput("bad-device", lambda t: ["--model", "sf_mamba_micro", "--device", "abacus"], ["--device 'abacus'"]),
    BadInput("zero-batch", lambda t: ["--model", "sf_mamba_micro", "--batch", "0"], ["--batch must be positive"]),
]])
def test_bench_bad_input(case, files, capsys):
    assert_bad_input(capsys, "bench", case, files)


def eval_data(t):  # a valid val split: eval then gets to the checkpoint
    return ["--data-dir", t / "images"]


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("missing-checkpoint", lambda t: [t / "missing.pth", *eval_data(t)], ["checkpoint", "missing.pth", "not found"]),
    BadInput("text-file", lambda t: [t / "not_a_checkpoint.pth", *eval_data(t)],
             ["not_a_checkpoint.pth", "is not a readable PyTorch checkpoint"]),
    BadInput("corrupt-checkpoint", lambda t: [t / "corrupt.pth", *eval_data(t)],
             ["corrupt.pth", "is not a readable PyTorch checkpoint"]),
    BadInput("directory", lambda t: [t / "a_directory.pth", *eval_data(t)], ["a_directory.pth", "is not a file"]),
    BadInput("not-a-state-dict", lambda t: [t / "a_list.pth", "--model", "sf_mamba_micro", *eval_data(t)],
             ["a_list.pth", "holds no state_dict"]),
    BadInput("state-dict-needs-model", lambda t: [t / "small.pth", *eval_data(t)], ["a plain state_dict needs --model"]),
    BadInput("unknown-model", lambda t: [t / "small.pth", "--model", "sf_mamba_nope", *eval_data(t)],
             ["unknown model 'sf_mamba_nope'"]),
    BadInput("checkpoint-does-not-fit", lambda t: [t / "small.pth", "--model", "sf_mamba_micro", *eval_data(t)],
             ["small.pth", "does not fit sf_mamba_micro", "Missing key(s)"]),
    BadInput("ema-of-a-plain-state-dict", lambda t: [t / "small.pth", "--model", "sf_mamba_micro", "--use-ema",
                                                     *eval_data(t)], ["--use-ema needs a checkpoint written by sf_mamba train"]),
    BadInput("unwritable-out", lambda t: [t / "small.pth", *eval_data(t), "--out", out(t)], ["--out", "cannot be written"],
             lambda t: [out(t)]),
]])
def test_eval_bad_input(case, files, capsys):
    assert_bad_input(capsys, "eval", case, files)


def test_eval_bad_data_dir(files, capsys):
    """Data that does not exist: the line names --data-dir (checked before the checkpoint is read)."""
    case = BadInput("no-data", lambda t: [t / "small.pth", "--model", "sf_mamba_micro", "--data-dir", "/nonexistent/data"],
                    ["--data-dir", "/nonexistent/data", "does not exist"])
    assert_bad_input(capsys, "eval", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("unknown-model", lambda t: ["--model", "sf_mamba_nope", "--out-dir", t / "p"], ["unknown model 'sf_mamba_nope'"],
             lambda t: [t / "p" / "probe.json", t / "p" / "erf.png"]),
    BadInput("bad-kwarg-value", lambda t: ["--model", "sf_mamba_micro", "--model-kwargs", '{"fold": 0}', "--out-dir",
                                           t / "p"], ["rejects --model-kwargs", "fold must be"],
             lambda t: [t / "p" / "probe.json"]),
    BadInput("missing-checkpoint", lambda t: ["--model", "sf_mamba_micro", "--checkpoint", t / "missing.pth",
                                              "--out-dir", t / "p"], ["--checkpoint", "missing.pth", "not found"]),
    BadInput("text-checkpoint", lambda t: ["--model", "sf_mamba_micro", "--checkpoint", t / "not_a_checkpoint.pth",
                                           "--out-dir", t / "p"], ["--checkpoint", "is not a readable PyTorch checkpoint"],
             lambda t: [t / "p" / "probe.json"]),
    BadInput("corrupt-checkpoint", lambda t: ["--model", "sf_mamba_micro", "--checkpoint", t / "corrupt.pth",
                                              "--out-dir", t / "p"], ["--checkpoint", "is not a readable PyTorch checkpoint"]),
    BadInput("checkpoint-does-not-fit", lambda t: ["--model", "sf_mamba_micro", "--checkpoint", t / "small.pth",
                                                   "--scan", "uni", "--attention", "off", "--out-dir", t / "p"],
             ["--checkpoint", "does not fit sf_mamba_micro"], lambda t: [t / "p" / "probe.json"]),
    BadInput("unwritable-out-dir", lambda t: ["--model", "sf_mamba_micro", "--out-dir", t / BLOCKER / "p"],
             ["--out-dir", "cannot be written"]),
]])
def test_probe_bad_input(case, files, capsys):
    assert_bad_input(capsys, "probe", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("unknown-scan", lambda t: ["--scan", "sideways"], ["--scan", "invalid choice: 'sideways'"]),
]])
def test_models_bad_input(case, files, capsys):
    assert_bad_input(capsys, "models", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("val-fraction", lambda t: ["--out", t / "d", "--val-fraction", "1.5"], ["--val-fraction must be in (0, 1)"],
             lambda t: [t / "d"]),
    BadInput("size", lambda t: ["--out", t / "d", "--size", "4"], ["--size must be >= 8"], lambda t: [t / "d"]),
    BadInput("unwritable-out", lambda t: ["--out", t / BLOCKER / "d"], ["--out", "cannot be written"]),
    BadInput("out-is-a-file", lambda t: ["--out", t / "notes.txt"], ["--out", "is not a directory"]),
    BadInput("unknown-dataset", lambda t: ["imagenet", "--out", t / "d"], ["invalid choice: 'imagenet'"]),
]])
def test_data_bad_input(case, files, capsys):
    assert_bad_input(capsys, "data", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("not-json", lambda t: ["show", "--path", t / "notes.txt"], ["notes.txt"]),
    BadInput("missing", lambda t: ["show", "--path", t / "missing.json"], ["missing.json"]),
    BadInput("build-without-gpu", lambda t: ["build", "--out", t / "lut.json"], ["no CUDA GPU"], lambda t: [t / "lut.json"]),
]])
def test_lut_bad_input(case, files, capsys):
    if "build" in case.label and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_bad_input(capsys, "lut", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("zero-fold", lambda t: ["--out", t / "s.json", "--folds", "0", "1"], ["--folds", "positive"],
             lambda t: [t / "s.json"]),
    BadInput("unknown-backend", lambda t: ["--out", t / "s.json", "--backend", "abacus"], ["backend", "abacus"],
             lambda t: [t / "s.json"]),
    BadInput("unwritable-out", lambda t: ["--out", out(t, "s.json")], ["--out", "cannot be written"]),
]])
def test_fold_sweep_bad_input(case, files, capsys):
    assert_bad_input(capsys, "fold-sweep", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("slurm-extra", lambda t: ["--cluster", "debug", "--run-dir", t / "r", "--slurm-extra", "mail", "--", "x"],
             ["--slurm-extra expects KEY=VALUE", "'mail'"], lambda t: [t / "r"]),
    BadInput("missing-hash-file", lambda t: ["--cluster", "debug", "--run-dir", t / "r", "--hash-file", t / "nope.yaml",
                                             "--", "x"], ["--hash-file", "nope.yaml"], lambda t: [t / "r"]),
    BadInput("no-subcommand", lambda t: ["--cluster", "debug", "--run-dir", t / "r"], ["give the subcommand after '--'"],
             lambda t: [t / "r"]),
    BadInput("launch-itself", lambda t: ["--cluster", "debug", "--run-dir", t / "r", "--", "launch"],
             ["refusing to launch 'launch' itself"], lambda t: [t / "r"]),
    BadInput("unwritable-run-dir", lambda t: ["--cluster", "debug", "--run-dir", t / BLOCKER / "r", "--", "x"],
             ["--run-dir", "cannot be created"]),
    BadInput("unknown-cluster", lambda t: ["--cluster", "kubernetes", "--run-dir", t / "r", "--", "x"],
             ["--cluster", "invalid choice: 'kubernetes'"], lambda t: [t / "r"]),
]])
def test_launch_bad_input(case, files, capsys):
    assert_bad_input(capsys, "launch", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("missing-manifest", lambda t: ["--manifest", t / "missing.json", "--out", t / "runs.csv"],
             ["missing.json"], lambda t: [t / "runs.csv"]),
    BadInput("manifest-not-json", lambda t: ["--manifest", t / "notes.txt", "--out", t / "runs.csv"],
             ["notes.txt"], lambda t: [t / "runs.csv"]),
    BadInput("unwritable-out", lambda t: ["--manifest", t / "manifest.json", "--out", out(t, "runs.csv")],
             ["--out", "cannot be written"]),
]])
def test_gather_bad_input(case, files, capsys):
    assert_bad_input(capsys, "gather", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("missing-runs", lambda t: ["--runs", t / "missing.csv", "--out", t / "rep", "--all"], ["missing.csv"],
             lambda t: [t / "rep"]),
    BadInput("unknown-rq", lambda t: ["--runs", t / "notes.txt", "--out", t / "rep", "--rq", "rq99"],
             ["invalid choice: 'rq99'"], lambda t: [t / "rep"]),
    BadInput("unwritable-out", lambda t: ["--runs", t / "notes.txt", "--out", t / BLOCKER / "rep", "--all"],
             ["--out", "cannot be written"]),
]])
def test_report_bad_input(case, files, capsys):
    assert_bad_input(capsys, "report", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("unwritable-out", lambda t: ["--out", t / BLOCKER / "seg"], ["seg"]),
    BadInput("too-small", lambda t: ["--out", t / "seg", "--size", "16"], ["size must be in [32"], lambda t: [t / "seg"]),
]])
def test_seg_data_bad_input(case, files, capsys):
    assert_bad_input(capsys, "seg-data", case, files)


SEG_SMOKE = Path(__file__).resolve().parents[1] / "configs/seg/smoke.py"
SEG_CASES = [
    BadInput("missing-config", lambda t: ["--config", t / "missing.py", "--work-dir", t / "w"],
             ["config file", "missing.py", "not found"], lambda t: [t / "w" / "metrics.json"]),
    BadInput("missing-data-root", lambda t: ["--config", SEG_SMOKE, "--work-dir", t / "w",
                                             "--data-root", t / "nope"], ["data root", "nope", "does not exist"],
             lambda t: [t / "w" / "metrics.json"]),
]


@pytest.mark.parametrize("case", [c.param() for c in SEG_CASES])
def test_seg_train_bad_input(case, files, capsys, monkeypatch):
    pytest.importorskip("mmseg")
    monkeypatch.chdir(files)  # the smoke config's own data root (relative) does not exist there
    assert_bad_input(capsys, "seg-train", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    *(BadInput(c.label, lambda t, c=c: [*c.argv(t), "--checkpoint", t / "small.pth"], c.names, c.outputs)
      for c in SEG_CASES),
    BadInput("missing-checkpoint", lambda t: ["--config", SEG_SMOKE, "--work-dir", t / "w",
                                              "--checkpoint", t / "missing.pth"], ["checkpoint", "missing.pth"],
             lambda t: [t / "w" / "metrics.json"]),
    BadInput("default-data-root-missing", lambda t: ["--config", SEG_SMOKE, "--work-dir", t / "w",
                                                     "--checkpoint", t / "small.pth"],
             ["data root", "does not exist"], lambda t: [t / "w" / "metrics.json"]),
]])
def test_seg_test_bad_input(case, files, capsys, monkeypatch):
    pytest.importorskip("mmseg")
    monkeypatch.chdir(files)
    assert_bad_input(capsys, "seg-test", case, files)


DET_SMOKE = Path(__file__).resolve().parents[1] / "configs/det/smoke.py"
DET_CASES = [BadInput(c.label, lambda t, c=c: [str(a).replace(str(SEG_SMOKE), str(DET_SMOKE)) for a in c.argv(t)],
                      [n.replace("seg", "det") for n in c.names], c.outputs) for c in SEG_CASES]


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("unwritable-out", lambda t: ["--out", t / BLOCKER / "det"], ["det"]),
    BadInput("no-val-images", lambda t: ["--out", t / "det", "--n-val", "0"], ["n_train and n_val must be >= 1"],
             lambda t: [t / "det"]),
]])
def test_det_data_bad_input(case, files, capsys):
    assert_bad_input(capsys, "det-data", case, files)


@pytest.mark.parametrize("case", [c.param() for c in DET_CASES])
def test_det_train_bad_input(case, files, capsys, monkeypatch):
    pytest.importorskip("mmdet")
    monkeypatch.chdir(files)
    assert_bad_input(capsys, "det-train", case, files)


@pytest.mark.parametrize("case", [c.param() for c in DET_CASES])
def test_det_test_bad_input(case, files, capsys, monkeypatch):
    pytest.importorskip("mmdet")
    monkeypatch.chdir(files)
    case = BadInput(case.label, lambda t, c=case: [*c.argv(t), "--checkpoint", t / "small.pth"], case.names,
                    case.outputs)
    assert_bad_input(capsys, "det-test", case, files)


@pytest.mark.parametrize("case", [c.param() for c in [
    BadInput("unknown-model", lambda t: ["--model", "sf_mamba_nope", "--out-dir", t / "fc"],
             ["unknown model 'sf_mamba_nope'"], lambda t: [t / "fc" / "metrics.json"]),
    BadInput("bad-kwarg-value", lambda t: ["--model-kwargs", '{"scan": "sideways"}', "--out-dir", t / "fc"],
             ["scan must be one of"], lambda t: [t / "fc" / "metrics.json"]),
    BadInput("kwargs-not-json", lambda t: ["--model-kwargs", "{", "--out-dir", t / "fc"], ["--model-kwargs is not JSON"]),
    BadInput("zero-threads", lambda t: ["--threads", "0", "--out-dir", t / "fc"], ["--threads must be >= 1"]),
    BadInput("unwritable-out-dir", lambda t: ["--out-dir", t / BLOCKER / "fc"], ["--out-dir", "cannot be written"]),
]])
def test_fc_train_bad_input(case, files, capsys):
    assert_bad_input(capsys, "fc-train", case, files)


def test_every_subcommand_has_a_bad_input_table():
    """A new subcommand gets a table here (train: beside the trainer's tests)."""
    tested = {name.removeprefix("test_").removesuffix("_bad_input").replace("_", "-")
              for name in globals() if name.startswith("test_") and name.endswith("_bad_input")}
    missing = set(SUBCOMMANDS) - tested - {"train"}
    assert not missing, f"no bad-input table for: {sorted(missing)}"
