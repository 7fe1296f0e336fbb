"""``sf_mamba seg-data``: real-texture horse set, mmseg layout, deterministic, atomic, idempotent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
from PIL import Image  # noqa: E402

from sf_mamba.seg import data as segdata  # noqa: E402

SMALL = dict(n_train=6, n_val=3, size=48, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_labels_and_images(tmp_path):
    out = tmp_path / "seg"
    m = segdata.build(out, **SMALL)
    for split, n in (("train", 6), ("val", 3)):
        imgs = sorted((out / "img_dir" / split).glob("*.png"))
        anns = sorted((out / "ann_dir" / split).glob("*.png"))
        assert len(imgs) == len(anns) == n
        assert [p.name for p in imgs] == [p.name for p in anns]
        for ip, ap in zip(imgs, anns):
            img, lab = np.array(Image.open(ip)), np.array(Image.open(ap))
            assert img.shape == (48, 48, 3) and img.dtype == np.uint8
            assert lab.shape == (48, 48) and set(np.unique(lab)) <= {0, 1}
            assert 0 < lab.mean() < 0.6  # a horse is there, and it is not everything
            # the horse pixels carry the grass texture, the rest the brick: they differ
            assert img[lab == 1].std() > 0 and img[lab == 0].std() > 0
    assert m["classes"] == ["background", "horse"]
    assert m["params"]["seed"] == 7 and set(m["files"]) == set(_files(out))
    val_fg = m["stats"]["val"]["foreground_fraction"]
    labels = np.stack([np.array(Image.open(p)) for p in sorted((out / "ann_dir/val").glob("*.png"))])
    assert val_fg == pytest.approx(labels.mean())
    assert m["trivial_all_background"]["mIoU"] == pytest.approx(100 * (1 - labels.mean()) / 2)
    assert json.loads((out / "manifest.json").read_text()) == m


def test_deterministic_and_seed_dependent(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    segdata.build(a, **SMALL)
    segdata.build(b, **SMALL)
    segdata.build(c, **{**SMALL, "seed": 8})
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)


def test_idempotent_and_refuses_other_params(tmp_path):
    out = tmp_path / "seg"
    segdata.build(out, **SMALL)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    segdata.build(out, **SMALL)  # same parameters: nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    with pytest.raises(FileExistsError):
        segdata.build(out, **{**SMALL, "n_val": 4})
    m = segdata.build(out, **{**SMALL, "n_val": 4}, force=True)
    assert m["stats"]["val"]["images"] == 4 and len(list((out / "img_dir/val").glob("*.png"))) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["seg"]  # no temp or old trees left behind


def test_atomic_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "seg"
    calls = {"n": 0}
    real = segdata.make_sample

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(segdata, "make_sample", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        segdata.build(out, **SMALL)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    from sf_mamba.cli import main

    out = tmp_path / "cli"
    assert main(["seg-data", "--out", str(out), "--n-train", "2", "--n-val", "2", "--size", "40"]) == 0
    assert "all-background mIoU" in capsys.readouterr().out
    assert (out / "manifest.json").is_file() and os.path.isdir(out / "ann_dir" / "val")
    # other parameters on an existing set: exit 2, one line, nothing touched
    assert main(["seg-data", "--out", str(out), "--n-train", "3", "--n-val", "2", "--size", "40"]) == 2
    assert capsys.readouterr().err.startswith("sf_mamba seg-data: error:")
    assert len(list((out / "img_dir" / "train").glob("*.png"))) == 2
