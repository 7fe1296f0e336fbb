"""OpenMMLab backbone adapter for the SF-Mamba family (any timm ``features_only`` model).

One class for both downstream tasks: importing this module registers ``SFMambaBackbone`` in
``mmseg.registry.MODELS`` and in ``mmdet.registry.MODELS`` (each if that package is installed); configs
load it with ``custom_imports=dict(imports=['sf_mamba.openmmlab.backbone'], allow_failed_imports=False)``.

Design rules (see docs/segmentation.md, docs/detection.md):

* The backbone is ``timm.create_model(arch, features_only=True, out_indices=..., **model_kwargs)``.
  *Every* key of the config dict other than the adapter's own (``arch``, ``out_indices``,
  ``out_norm``, ``pretrained``, ``pretrained_key``, ``pretrained_trusted``, ``init_cfg``) is passed to
  the model, so nothing is silently swallowed (MambaVision's wrapper dropped ``drop_path_rate``), and
  a key the model does not know raises ``TypeError`` at build time. ``None`` values are rejected
  because ``timm.create_model`` drops them silently.
* Each output map gets its own norm (``out_norms.{i}``, channels-first LayerNorm by default); the
  names contain ``norm`` so the recipe's ``custom_keys={'norm': decay_mult=0}`` applies to them.
* ``pretrained=<path>`` loads an ImageNet checkpoint from our trainer into the ``features_only`` model
  (``init_weights``), mapping classifier key names onto the feature model, and reports missing and
  unexpected keys loudly; the classification head/final norm are listed as *expected* unexpected.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Sequence

import torch
import torch.nn as nn

from sf_mamba.openmmlab.compat import ensure_mmcv_ops

ensure_mmcv_ops()  # before mmseg/mmdet: with mmcv-lite, stub mmcv._ext so their models import

from mmengine.logging import print_log  # noqa: E402
from mmengine.model import BaseModule  # noqa: E402

# The downstream packages whose MODELS registry gets the adapter (each optional: a seg-only install
# has no mmdet; scope names as in the configs' default_scope).
TASK_PACKAGES: tuple[str, ...] = ("mmseg", "mmdet")


def _task_registries() -> dict:
    found = {}
    for package in TASK_PACKAGES:
        try:
            found[package] = importlib.import_module(f"{package}.registry").MODELS
        except ImportError:
            continue
    if not found:
        raise ImportError("sf_mamba.openmmlab.backbone needs mmsegmentation or mmdet: "
                          "pip install -e '.[seg]' or '.[det]'")
    return found

# Top-level module names that belong to the classifier only (head and the norm before pooling).
# Checkpoint keys under these prefixes are "expected unexpected" when loading into a feature model.
CLASSIFIER_PREFIXES: tuple[str, ...] = (
    "head", "norm", "fc", "classifier", "fc_norm", "head_drop", "pre_logits", "global_pool",
)
# Wrapper keys a training checkpoint may hold the weights under, in order of preference.
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model", "ema", "state_dict_ema", "model_ema")


def _log(msg: str, level: int = logging.INFO) -> None:
    print_log(msg, logger="current", level=level)


def extract_state_dict(ckpt: Any, key: str | None = None) -> dict[str, torch.Tensor]:
    """Return the flat ``name -> tensor`` dict inside a checkpoint, ``module.``/``_orig_mod.`` removed.

    ``key`` picks the wrapper entry explicitly (e.g. ``'ema'``); otherwise the first of
    :data:`STATE_DICT_KEYS` present is used, or the checkpoint itself if it is already flat.
    """
    if not isinstance(ckpt, dict):
        raise TypeError(f"checkpoint is a {type(ckpt).__name__}, expected a dict")
    if key is not None:
        if key not in ckpt:
            raise KeyError(f"checkpoint has no {key!r} entry (top-level keys: {sorted(ckpt)[:20]})")
        sd = ckpt[key]
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt
    else:
        found = [k for k in STATE_DICT_KEYS if isinstance(ckpt.get(k), dict)]
        if not found:
            raise KeyError("cannot find weights in checkpoint: expected a flat state_dict or one of "
                           f"{STATE_DICT_KEYS}; top-level keys are {sorted(ckpt)[:20]}")
        sd = ckpt[found[0]]
    # An EMA wrapper may nest once more (timm ModelEmaV2/V3 keep `module.`; some keep a 'state_dict').
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise KeyError(f"checkpoint entry {key!r} holds no state_dict ({type(sd).__name__}); "
                       "e.g. 'ema' is None when the run trained without EMA")
    out = {}
    for name, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        # DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        out[name] = value
    return out


def _canon(name: str) -> str:
    # timm's FeatureListNet flattens nested Sequentials, renaming `stages.0.x` to `stages_0.x`, and
    # FeatureGetterNet keeps the classifier under `model.`: compare names modulo both.
    if name.startswith("model."):
        name = name[len("model."):]
    return name.replace(".", "_")


def map_classifier_state_dict(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict:
    """Map a classifier state_dict onto a ``features_only`` model's state_dict keys.

    Returns a report dict: ``mapped`` (target_key -> tensor), ``missing`` (target keys not filled),
    ``unexpected`` (source keys not used, excluding classifier ones), ``expected_unexpected``
    (source keys of the classification head / final norm), ``mismatched`` (name matched, shape not).
    """
    by_canon: dict[str, str] = {}
    for k in target:
        c = _canon(k)
        if c in by_canon:
            raise RuntimeError(f"ambiguous feature-model keys {by_canon[c]!r} and {k!r}")
        by_canon[c] = k
    mapped: dict[str, torch.Tensor] = {}
    unexpected, expected_unexpected, mismatched = [], [], []
    for k, v in src.items():
        tk = k if k in target else by_canon.get(_canon(k))
        if tk is None:
            top = k.split(".", 1)[0]
            (expected_unexpected if top in CLASSIFIER_PREFIXES else unexpected).append(k)
            continue
        if tuple(target[tk].shape) != tuple(v.shape):
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[tk].shape)}")
            continue
        mapped[tk] = v
    missing = [k for k in target if k not in mapped]
    return dict(mapped=mapped, missing=missing, unexpected=unexpected,
                expected_unexpected=expected_unexpected, mismatched=mismatched)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SFMambaBackbone(BaseModule):
    """Four-level feature pyramid (strides 4/8/16/32) from a timm ``features_only`` model.

    Args:
        arch: timm model name, e.g. ``'sf_mamba_t'`` (``import sf_mamba`` registers them).
        out_indices: passed to timm; the feature levels to return (``(0, 1, 2, 3)`` for SF-Mamba).
        out_norm: ``'ln2d'`` (channels-first LayerNorm per output, as MambaVision) or ``None``.
        pretrained: path of an ImageNet checkpoint from our trainer, loaded in ``init_weights``.
        pretrained_key: wrapper entry holding the weights (``'state_dict'``, ``'model'``, ``'ema'``);
            default: the first of those present, or the file itself if it is a flat state_dict.
        pretrained_trusted: allow full unpickling of ``pretrained`` (only for files you trust);
            by default it is read with ``torch.load(weights_only=True)``.
        **model_kwargs: every other key goes to ``timm.create_model`` (drop_path_rate, window_size,
            scan, ...); unknown keys raise there.
    """

    def __init__(self, arch: str, out_indices: Sequence[int] = (0, 1, 2, 3), out_norm: str | None = "ln2d",
                 pretrained: str | None = None, pretrained_key: str | None = None,
                 pretrained_trusted: bool = False, init_cfg: dict | None = None, **model_kwargs: Any):
        super().__init__(init_cfg=init_cfg)
        import timm

        if arch.startswith("sf_mamba"):
            import sf_mamba  # noqa: F401  (registers the timm models)
        nones = sorted(k for k, v in model_kwargs.items() if v is None)
        if nones:
            raise ValueError(f"SFMambaBackbone: keys {nones} are None; timm.create_model would drop them "
                             "silently -- remove them to use the model default, or give a value")
        for key in ("features_only", "pretrained_cfg", "checkpoint_path", "num_classes"):
            if key in model_kwargs:
                raise ValueError(f"SFMambaBackbone: {key!r} is set by the adapter and cannot be overridden")
        self.arch = arch
        self.model_kwargs = dict(model_kwargs)
        self.pretrained = pretrained
        self.pretrained_key = pretrained_key
        self.pretrained_trusted = bool(pretrained_trusted)
        self.load_report: dict | None = None
        self.body = timm.create_model(arch, pretrained=False, features_only=True,
                                      out_indices=tuple(out_indices), **model_kwargs)
        self.out_indices = tuple(out_indices)
        self.out_channels = list(self.body.feature_info.channels())
        self.out_strides = list(self.body.feature_info.reduction())
        if out_norm == "ln2d":
            self.out_norms = nn.ModuleList(LayerNorm2d(c) for c in self.out_channels)
        elif out_norm is None or out_norm == "none":
            self.out_norms = nn.ModuleList(nn.Identity() for _ in self.out_channels)
        else:
            raise ValueError(f"SFMambaBackbone: out_norm must be 'ln2d' or None, got {out_norm!r}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.body(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        return tuple(norm(f) for norm, f in zip(self.out_norms, feats))

    # ------------------------------------------------------------------ checkpoint loading
    def init_weights(self) -> None:
        super().init_weights()
        if self.pretrained:
            self.load_report = self.load_pretrained(self.pretrained)

    def load_pretrained(self, path: str) -> dict:
        """Load our trainer's ImageNet checkpoint into the feature model; log every key problem."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SFMambaBackbone: pretrained checkpoint {path!r} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=not self.pretrained_trusted)
        except Exception as err:  # torch.serialization raises UnpicklingError (or RuntimeError)
            if self.pretrained_trusted:
                raise
            raise RuntimeError(
                f"SFMambaBackbone: {path!r} holds objects that torch.load(weights_only=True) refuses "
                f"({type(err).__name__}). If you trust the file, set backbone.pretrained_trusted=True."
            ) from err
        src = extract_state_dict(ckpt, self.pretrained_key)
        target = self.body.state_dict()
        report = map_classifier_state_dict(src, target)
        if not report["mapped"]:
            raise RuntimeError(
                f"SFMambaBackbone: no tensor of {path!r} matches {self.arch!r} "
                f"(checkpoint keys e.g. {list(src)[:5]}, model keys e.g. {list(target)[:5]})")
        self.body.load_state_dict(report["mapped"], strict=False)
        n_model = len(target)
        _log(f"SFMambaBackbone: loaded {len(report['mapped'])}/{n_model} backbone tensors from {path}")
        if report["expected_unexpected"]:
            _log("SFMambaBackbone: ignored classification head/norm keys (expected): "
                 + ", ".join(report["expected_unexpected"]))
        if report["missing"]:
            _log(f"SFMambaBackbone: MISSING {len(report['missing'])} backbone keys (left at init): "
                 + ", ".join(report["missing"]), logging.WARNING)
        if report["unexpected"]:
            _log(f"SFMambaBackbone: UNEXPECTED {len(report['unexpected'])} checkpoint keys (not used): "
                 + ", ".join(report["unexpected"]), logging.WARNING)
        if report["mismatched"]:
            _log(f"SFMambaBackbone: SHAPE MISMATCH, {len(report['mismatched'])} keys skipped: "
                 + "; ".join(report["mismatched"]), logging.WARNING)
        report = {k: v for k, v in report.items() if k != "mapped"} | {"loaded": len(report["mapped"])}
        return report


# The same class object in every task registry: one adapter, no per-task copy.
REGISTRIES = _task_registries()
for _registry in REGISTRIES.values():
    _registry.register_module(module=SFMambaBackbone)

__all__ = ["SFMambaBackbone", "REGISTRIES", "LayerNorm2d", "extract_state_dict", "map_classifier_state_dict",
           "CLASSIFIER_PREFIXES", "STATE_DICT_KEYS"]
