"""The offline digits set: real images, deterministic stratified split, atomic and idempotent builds,
and the ImageFolder layout checks that training and evaluation rely on."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from sf_mamba.data import DataLayoutError, build_digits, check_imagefolder
from sf_mamba.data import builders


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("d") / "digits"
    info = build_digits(out)
    assert info["created"]
    return out


def test_layout_counts_and_images(built):
    from PIL import Image

    info = check_imagefolder(built)
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["train_count"] == 1437 and info["val_count"] == 360      # 1,797 images, 80/20
    val_per_class = Counter(p.parent.name for p in (built / "val").rglob("*.png"))
    assert set(val_per_class.values()) <= {35, 36, 37}                  # stratified
    img = Image.open(next((built / "train" / "3").glob("*.png")))
    assert img.size == (32, 32) and img.mode == "RGB"
    import numpy as np

    arr = np.asarray(img)
    assert len(np.unique(arr)) > 10                                     # a real grey digit...
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # ...in 3 channels
    # no image is in both splits
    names = lambda s: {p.name for p in (built / s).rglob("*.png")}
    assert not names("train") & names("val")


def test_deterministic_and_idempotent(built, tmp_path):
    other = tmp_path / "again"
    build_digits(other)
    assert _tree(other) == _tree(built)
    manifest = json.loads((built / "dataset.json").read_text())
    assert manifest["split_sha256"] == json.loads((other / "dataset.json").read_text())["split_sha256"]
    before = {p: p.stat().st_mtime_ns for p in other.rglob("*")}
    info = build_digits(other)
    assert info["created"] is False
    assert before == {p: p.stat().st_mtime_ns for p in other.rglob("*")}


def test_different_parameters_refuse_then_force(tmp_path):
    out = tmp_path / "digits"
    build_digits(out, size=16)
    with pytest.raises(FileExistsError, match="--force"):
        build_digits(out, size=24)
    build_digits(out, size=24, force=True)
    from PIL import Image
    assert Image.open(next((out / "val" / "0").glob("*.png"))).size == (24, 24)
    assert not [p for p in tmp_path.iterdir() if p.name != "digits"]  # no .new/.old/.tmp left


def test_foreign_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        build_digits(out)
    assert (out / "precious.txt").read_text() == "keep"


def test_build_is_atomic_on_failure(tmp_path, monkeypatch):
    from PIL import Image

    calls = {"n": 0}
    real_save = Image.Image.save

    def flaky_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 500:
            raise OSError("disk full (simulated)")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    with pytest.raises(OSError, match="simulated"):
        build_digits(tmp_path / "digits")
    assert list(tmp_path.iterdir()) == []      # neither the target nor a temp dir is left behind


def test_cli_builds_and_reports(tmp_path, capsys):
    from sf_mamba.cli import main

    assert main(["data", "digits", "--out", str(tmp_path / "dg")]) == 0
    assert "train 1437" in capsys.readouterr().out
    assert main(["data", "--out", str(tmp_path / "dg")]) == 0
    assert "already present" in capsys.readouterr().out
    assert main(["data", "--out", str(tmp_path / "dg"), "--size", "16"]) == 2   # another build is there: bad input
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda r: None, "does not exist"),
    (lambda r: (r / "0").mkdir(parents=True), "no train/"),
    (lambda r: (r / "train" / "0").mkdir(parents=True), "no val/"),
    (lambda r: [(r / s).mkdir(parents=True) for s in ("train", "val")], "no class sub-folders"),
    (lambda r: [(r / s / "0").mkdir(parents=True) for s in ("train", "val")], "hold no images"),
])
def test_layout_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataLayoutError, match=message):
        check_imagefolder(root)


def test_layout_error_on_class_mismatch(built, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(built, root)
    shutil.rmtree(root / "val" / "9")
    with pytest.raises(DataLayoutError, match="differ between splits"):
        check_imagefolder(root)
    assert builders.check_imagefolder(built)["classes"]
