"""Fold LUT: nearest-entry lookup, fallbacks, atomic writes and the `sf_mamba lut` CLI on CPU."""

import argparse
import inspect
import json

import pytest
import torch

from sf_mamba_kernels.selective_scan import bench, lut, lut_cli

GPU = "Test GPU 80GB"


def entry(batch, seq_len, channels, dtype, fold):
    return {"batch": batch, "seq_len": seq_len, "channels": channels, "dtype": dtype, "fold": fold,
            "ms": {"1": 1.0, str(fold): 0.5}}


ENTRIES = [
    entry(32, 51, 320, "bfloat16", 4),
    entry(256, 51, 320, "bfloat16", 16),
    entry(256, 198, 160, "bfloat16", 8),
    entry(128, 198, 160, "float32", 2),
]


@pytest.fixture
def table_path(tmp_path, monkeypatch):
    path = tmp_path / "fold_lut.json"
    monkeypatch.setenv(lut.LUT_PATH_ENV, str(path))
    monkeypatch.setattr(lut, "device_name", lambda index: GPU)
    return path


def write(path, gpus):
    path.write_text(json.dumps({"schema": lut.SCHEMA, "gpus": gpus}))


def test_lookup_returns_nearest_measured_entry(table_path):
    write(table_path, {GPU: {"meta": {}, "entries": ENTRIES}})
    cuda = torch.device("cuda", 0)
    assert lut.lookup_fold(32, 51, 320, torch.bfloat16, cuda) == 4          # exact entry
    assert lut.lookup_fold(200, 51, 320, torch.bfloat16, cuda) == 16        # nearest batch
    assert lut.lookup_fold(256, 197, 192, torch.bfloat16, cuda) == 8        # nearest length/width
    assert lut.lookup_fold(128, 198, 160, torch.float32, cuda) == 2         # same dtype preferred
    assert lut.lookup_fold(128, 198, 160, torch.float16, cuda) == 2         # no fp16 entries: nearest of any dtype
    assert lut.lookup_fold(256, 198, 160, torch.float16, cuda) == 8
    assert lut.lookup_fold(3, 51, 320, "bf16", "cuda:0") == 4               # not clamped: the interface does


def test_lookup_falls_back_to_one(table_path):
    cuda = torch.device("cuda", 0)
    assert lut.lookup_fold(256, 51, 320, torch.bfloat16, cuda) == 1         # no table file
    table_path.write_text("")
    assert lut.lookup_fold(256, 51, 320, torch.bfloat16, cuda) == 1         # empty file
    write(table_path, {"Other GPU": {"meta": {}, "entries": ENTRIES}})
    assert lut.lookup_fold(256, 51, 320, torch.bfloat16, cuda) == 1         # GPU not measured
    write(table_path, {GPU: {"meta": {}, "entries": ENTRIES}})
    assert lut.lookup_fold(256, 51, 320, torch.bfloat16, "cpu") == 1        # CPU never folds


def test_table_reload_after_rewrite(table_path):
    """The lookup cache is keyed on the file's mtime, so a rebuilt table is picked up."""
    cuda = torch.device("cuda", 0)
    lut.write_entries([entry(64, 51, 320, "float16", 4)], GPU, {"mode": "fwd"}, table_path)
    assert lut.lookup_fold(64, 51, 320, torch.float16, cuda) == 4
    lut.write_entries([entry(64, 51, 320, "float16", 8)], GPU, {"mode": "fwd"}, table_path)
    assert lut.lookup_fold(64, 51, 320, torch.float16, cuda) == 8


def test_write_entries_keeps_other_gpus(table_path):
    write(table_path, {"Other GPU": {"meta": {}, "entries": ENTRIES}})
    lut.write_entries(ENTRIES[:1], GPU, {"mode": "fwd"}, table_path)
    table = json.loads(table_path.read_text())
    assert set(table["gpus"]) == {"Other GPU", GPU}
    assert table["gpus"][GPU]["entries"] == ENTRIES[:1]
    assert not list(table_path.parent.glob("*tmp*"))  # nothing left from the atomic write


def test_bad_table_and_dtype_are_rejected(table_path):
    table_path.write_text(json.dumps({"entries": []}))
    with pytest.raises(ValueError, match="not a fold LUT"):
        lut.read_table(table_path)
    with pytest.raises(ValueError, match="dtype must be"):
        lut.nearest_fold(ENTRIES, 1, 1, 1, torch.int8)


def test_shipped_table_is_valid():
    import tomllib

    assert lut.DEFAULT_LUT_PATH.is_file()
    package = lut.DEFAULT_LUT_PATH.parents[1]  # .../sf_mamba_kernels
    pyproject = tomllib.loads((package.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["sf_mamba_kernels"]
    assert lut.DEFAULT_LUT_PATH in {p for pattern in globs for p in package.glob(pattern)}  # it ships
    table = lut.read_table(lut.DEFAULT_LUT_PATH)
    assert table["schema"] == lut.SCHEMA
    for gpu, section in table["gpus"].items():  # any shipped entry must carry its measured times
        for e in section["entries"]:
            assert e["ms"][str(e["fold"])] == min(e["ms"].values()), (gpu, e)


def parse(argv):
    parser = argparse.ArgumentParser()
    lut_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_lut_build_fails_clearly_without_gpu(tmp_path, capsys):
    out = tmp_path / "lut.json"
    assert lut_cli.main(parse(["build", "--out", str(out)])) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        bench.measure_lut_entries(device="cpu")


def test_lut_show_prints_entries(table_path, capsys):
    write(table_path, {GPU: {"meta": {"measured_at": "x", "mode": "fwd"}, "entries": ENTRIES}})
    assert lut_cli.main(parse(["show", "--path", str(table_path)])) == 0
    text = capsys.readouterr().out
    assert GPU in text and "4 entries" in text and "bfloat16" in text
    table_path.write_text(json.dumps({"schema": lut.SCHEMA, "gpus": {}}))
    assert lut_cli.main(parse(["show", "--path", str(table_path)])) == 0
    assert "empty" in capsys.readouterr().out


def test_cli_dispatch_reaches_lut(capsys, table_path):
    from sf_mamba.cli import main

    write(table_path, {})
    assert main(["lut", "show"]) == 0
    assert "empty" in capsys.readouterr().out


def test_build_defaults_are_bench_defaults_and_help_names_the_table_variable(capsys):
    """lut_cli builds its parser without torch: unset shape options mean .bench's defaults, and the
    --out help spells the environment variable that .lut reads."""
    args = parse(["build"])
    assert all(getattr(args, name) is None for name in lut_cli._SHAPE_OPTIONS)
    assert set(lut_cli._SHAPE_OPTIONS) <= set(inspect.signature(bench.measure_lut_entries).parameters)
    with pytest.raises(SystemExit):
        parse(["build", "--help"])
    assert f"${lut.LUT_PATH_ENV}" in capsys.readouterr().out
