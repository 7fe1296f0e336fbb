"""Shared helpers: atomic writes never leave a truncated or temp file; provenance reads git, versions and
Slurm ids; config hashing ignores runtime-only keys."""

from __future__ import annotations

import json

import pytest
import torch

from sf_mamba.utils.io import atomic_directory, atomic_torch_save, atomic_write_json, atomic_write_text
from sf_mamba.utils.provenance import build_meta, config_hash, slurm_info


def test_atomic_writes_replace_and_clean_up(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    ck = tmp_path / "last.pth"
    atomic_torch_save({"x": torch.ones(2)}, ck)
    with pytest.raises(Exception):
        atomic_torch_save({"bad": lambda: 0}, ck)       # unpicklable: the old checkpoint must survive
    assert torch.equal(torch.load(ck, weights_only=True)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["last.pth", "m.json", "sub"]


def test_atomic_directory(tmp_path):
    with atomic_directory(tmp_path / "ok") as d:
        (d / "f").write_text("1")
    assert (tmp_path / "ok" / "f").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "fail") as d:
            (d / "f").write_text("1")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_provenance_fields(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm_info()["job_id"] == "77" and slurm_info()["restart_count"] == 2
    meta = build_meta(config={"a": 1}, seed=5)
    assert meta["config_sha256"] == config_hash({"a": 1}) and meta["seed"] == 5
    assert len(meta["git"]["sha"]) == 40 and isinstance(meta["git"]["dirty"], bool)
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"]
    assert meta["device"]["device_name"]


def test_train_config_hash_ignores_runtime_keys():
    from sf_mamba.train.config import config_hash as train_hash, load_config

    a = load_config("smoke")
    b = load_config("smoke", ["data.num_workers=7", "train.progress=false", "train.cpu_threads=2"])
    c = load_config("smoke", ["optim.lr=1e-4"])
    assert train_hash(a) == train_hash(b) != train_hash(c)


def test_resumable_sampler_and_epoch_seeded_augmentation(tmp_path):
    import random

    from sf_mamba.data import build_digits
    from sf_mamba.train.data import EpochSeededDataset, ResumableSampler

    s = ResumableSampler(100, seed=3, batch_size=8)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip_batches=3)
    assert list(s) == full[24:] and len(s) == 76
    s.set_epoch(3)
    assert list(s) != full and sorted(list(s)) == list(range(100))
    shards = []
    for rank in range(3):
        r = ResumableSampler(100, seed=3, rank=rank, world_size=3, batch_size=8)
        r.set_epoch(2)
        shards.append(list(r))
    assert all(len(x) == 33 for x in shards) and not set(shards[0]) & set(shards[1])

    from timm.data import create_dataset, create_transform

    root = tmp_path / "digits"
    build_digits(root)
    ds = create_dataset("", root=str(root), split="train", is_training=True)
    ds.transform = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5)
    wrapped = EpochSeededDataset(ds, seed=0)
    wrapped.set_epoch(1)
    a = wrapped[5][0]
    torch.manual_seed(123)
    random.seed(9)
    state = torch.get_rng_state()
    _ = [wrapped[i] for i in (7, 3)]
    assert torch.equal(torch.get_rng_state(), state)           # caller's RNG untouched
    assert torch.equal(wrapped[5][0], a)                       # same (epoch, index) -> same augmentation
    wrapped.set_epoch(2)
    assert not torch.equal(wrapped[5][0], a)                   # new epoch -> new augmentation


def test_recipes_are_package_data():
    """The recipes live inside the package and pyproject ships them, so an installed (non-editable)
    sf_mamba resolves `--config imagenet_t` without the repository; every package-data glob matches."""
    import tomllib
    from pathlib import Path

    import sf_mamba
    from sf_mamba.train.config import CONFIG_DIR, resolve_config_path

    package = Path(sf_mamba.__file__).parent
    assert CONFIG_DIR.is_relative_to(package)
    shipped = tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for name, patterns in shipped.items():       # every glob of every package ships something
        root = package if name == "sf_mamba" else package.parent / "kernels" / name
        for pattern in patterns:
            assert list(root.glob(pattern)), f"package-data glob {name}: {pattern!r} matches nothing"
    globs = shipped["sf_mamba"]
    recipes = {p for pattern in globs for p in package.glob(pattern) if p.suffix == ".yaml"}
    assert {"base.yaml", "smoke.yaml", "imagenet_t.yaml"} <= {p.name for p in recipes}
    assert resolve_config_path("imagenet_t") in recipes
