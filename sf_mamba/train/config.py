"""Training configs: YAML files with ``_base_`` inheritance, ``key=value`` overrides, strict keys.

``load_config(path, overrides)`` returns a plain nested dict:

1. ``sf_mamba/configs/train/base.yaml`` (the MambaVision recipe) defines the schema: every allowed key.
2. ``path`` (and its ``_base_`` chain, resolved relative to each file) is deep-merged on top.
   ``path`` may also be a bare name (``smoke``, ``imagenet_t``) looked up in ``sf_mamba/configs/train/``
   (package data: the recipes are installed with the package).
3. ``overrides`` (``["optim.lr=1e-3", "train.batch_size=32"]``) are applied last; each value is
   parsed as YAML (``1e-3`` → float, ``null`` → None, ``[1,2]`` → list).

Any key absent from the base (except below ``model.kwargs``, which goes to the model constructor
and is validated there) raises ``ConfigError`` naming the key. ``config_hash(cfg)`` hashes the
config *without* the runtime-only keys in ``RUNTIME_KEYS`` (worker count, logging, progress bars),
which may change between restarts of the same run.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from sf_mamba.utils.provenance import config_hash as _hash

# the recipes ship inside the package (package data), so an installed sf_mamba finds them too
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "train"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
FREE_FORM = {("model", "kwargs")}
# train.final_bench is a removed key (the trainer no longer benchmarks); it stays listed so that
# run directories written before keep their config hash and resume.
RUNTIME_KEYS = {("data", "num_workers"), ("data", "pin_memory"), ("train", "log_every_steps"),
                ("train", "progress"), ("train", "ckpt_every_steps"), ("train", "final_bench"),
                ("train", "cpu_threads")}


class ConfigError(ValueError):
    """Unknown key, bad value or unreadable config file."""


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: not UTF-8 text ({err.reason})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def resolve_config_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(path)!r} not found (not a file, nor one of {names} in {CONFIG_DIR})")


def _load_chain(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else list(base)
    merged: dict = {}
    for b in bases:
        merged = deep_merge(merged, _load_chain((path.parent / b), seen + (path,)), check=False)
    return deep_merge(merged, data, check=False)


def deep_merge(base: dict, new: dict, check: bool = True, _prefix: tuple = ()) -> dict:
    """Return ``base`` updated recursively with ``new``; with ``check``, unknown keys raise."""
    out = copy.deepcopy(base)
    free = any(_prefix[:len(f)] == f for f in FREE_FORM)  # below model.kwargs: any key, still merged
    for key, value in new.items():
        where = _prefix + (key,)
        if check and key not in out and not free:
            section = ".".join(_prefix) or "top level"
            allowed = ", ".join(sorted(map(str, out))) if isinstance(out, dict) else ""
            raise ConfigError(f"unknown config key {'.'.join(map(str, where))!r} "
                              f"({section} allows: {allowed})")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, check, where)
        elif check and not free and isinstance(out.get(key), dict) and not isinstance(value, dict):
            raise ConfigError(f"config key {'.'.join(where)!r} is a section; set its sub-keys "
                              f"({', '.join(out[key])}) instead of {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict:
    """``'a.b.c=value'`` → ``{'a': {'b': {'c': parsed value}}}``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def _fix_numbers(node: Any) -> Any:
    """YAML 1.1 parses '5e-3' (no dot) as a string; turn numeric-looking strings into floats."""
    if isinstance(node, dict):
        return {k: _fix_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_numbers(v) for v in node]
    if isinstance(node, str):
        try:
            if any(c.isdigit() for c in node) and any(c in node.lower() for c in "e.") and not node.startswith("rand"):
                return float(node)
        except ValueError:
            return node
    return node


def validate(cfg: dict) -> dict:
    """Light type/range checks with messages that name the key."""
    def need(cond: bool, key: str, msg: str):
        if not cond:
            raise ConfigError(f"config key {key!r}: {msg}")

    need(isinstance(cfg["model"]["name"], str) and cfg["model"]["name"], "model.name", "must be a model name")
    need(isinstance(cfg["model"]["kwargs"], dict), "model.kwargs", "must be a mapping")
    for key in ("batch_size",):
        v = cfg["train"][key]
        need(isinstance(v, int) and v > 0, f"train.{key}", f"must be a positive int, got {v!r}")
    for key in ("lr", "weight_decay"):
        v = cfg["optim"][key]
        need(isinstance(v, (int, float)) and v >= 0, f"optim.{key}", f"must be a number >= 0, got {v!r}")
    for key in ("epochs", "cooldown_epochs", "warmup_epochs"):
        v = cfg["sched"][key]
        need(isinstance(v, int) and v >= 0, f"sched.{key}", f"must be an int >= 0, got {v!r}")
    need(cfg["sched"]["epochs"] > 0, "sched.epochs", "must be > 0")
    v = cfg["train"]["ckpt_every_steps"]
    need(isinstance(v, int) and v > 0, "train.ckpt_every_steps", f"must be a positive int, got {v!r}")
    need(cfg["train"]["amp_dtype"] in ("float16", "bfloat16"), "train.amp_dtype", "float16 or bfloat16")
    need(cfg["train"]["device"] in ("auto", "cpu", "cuda"), "train.device", "auto, cpu or cuda")
    need(not cfg["mesa"]["weight"] or cfg["ema"]["enabled"], "mesa.weight",
         "MESA distils from the EMA teacher: mesa.weight > 0 needs ema.enabled: true")
    need(cfg["optim"]["clip_mode"] in ("norm", "value", "agc"), "optim.clip_mode", "norm, value or agc")
    return cfg


def default_config() -> dict:
    return _fix_numbers(_load_chain(BASE_CONFIG))


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] | dict | None = None) -> dict:
    """Load, merge, override and validate a training config (see module docstring)."""
    cfg = default_config()
    if path is not None:
        cfg = deep_merge(cfg, _fix_numbers(_load_chain(resolve_config_path(path))))
    if isinstance(overrides, dict):
        cfg = deep_merge(cfg, overrides)
    else:
        for item in overrides or ():
            cfg = deep_merge(cfg, parse_override(item))
    return validate(cfg)


def hashable_config(cfg: dict) -> dict:
    out = copy.deepcopy(cfg)
    for section, key in RUNTIME_KEYS:
        out.get(section, {}).pop(key, None)
    return out


def config_hash(cfg: dict) -> str:
    """SHA-256 of the config without runtime-only keys (see ``RUNTIME_KEYS``)."""
    return _hash(hashable_config(cfg))
