"""The training run's components, built from the config on timm: model, device, optimizer,
scheduler, loss (with mixup/cutmix), EMA. Each raises ``ConfigError`` naming the config key when
timm rejects a value, so a bad recipe fails before the run directory is touched."""

from __future__ import annotations

import torch
import torch.nn as nn

from sf_mamba.train.config import ConfigError


def check_model_name(name: str) -> None:
    import timm

    import sf_mamba  # noqa: F401  registers the sf_mamba_* timm models

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[-1]}*")[:8] if "_" in name else []
        raise ConfigError(f"unknown model {name!r} (config key model.name); "
                          f"registered sf_mamba models: {timm.list_models('sf_mamba*')}"
                          + (f"; similar: {close}" if close else ""))


def create_model(cfg: dict, num_classes: int) -> nn.Module:
    import timm

    check_model_name(cfg["model"]["name"])
    kwargs = dict(cfg["model"]["kwargs"])
    if cfg["model"].get("drop_path_rate") is not None:
        kwargs.setdefault("drop_path_rate", cfg["model"]["drop_path_rate"])
    try:
        return timm.create_model(cfg["model"]["name"], pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {cfg['model']['name']!r} rejected model.kwargs {kwargs}: {err}") from err


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(cfg: dict, dist_info) -> torch.device:
    want = cfg["train"]["device"]
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


def build_optimizer(cfg: dict, model: nn.Module):
    from timm.optim import create_optimizer_v2

    oc = cfg["optim"]
    try:
        return create_optimizer_v2(model, opt=oc["opt"], lr=oc["lr"], weight_decay=oc["weight_decay"],
                                   betas=tuple(oc["betas"]), eps=oc["eps"])
    except (ValueError, AssertionError, KeyError, TypeError) as err:
        raise ConfigError(f"optim: cannot build optimizer {oc['opt']!r}: {err}") from err


def build_scheduler(cfg: dict, optimizer, steps_per_epoch: int):
    """timm scheduler stepped per optimizer step; returns (scheduler, number of epochs incl. cool-down)."""
    from timm.scheduler import create_scheduler_v2

    sc = cfg["sched"]
    try:
        scheduler, num_epochs = create_scheduler_v2(
            optimizer, sched=sc["name"], num_epochs=sc["epochs"], cooldown_epochs=sc["cooldown_epochs"],
            warmup_epochs=sc["warmup_epochs"], warmup_lr=sc["warmup_lr"], min_lr=sc["min_lr"],
            step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    except (ValueError, AssertionError, KeyError, TypeError) as err:
        raise ConfigError(f"sched: cannot build scheduler {sc['name']!r}: {err}") from err
    if scheduler is None:
        raise ConfigError(f"sched.name {sc['name']!r} is not a known timm scheduler")
    return scheduler, num_epochs


def build_ema(cfg: dict, model: nn.Module):
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=cfg["ema"]["decay"]) if cfg["ema"]["enabled"] else None
    if cfg["mesa"]["weight"] and ema is None:
        raise ConfigError("mesa.weight > 0 needs ema.enabled (MESA distils from the EMA teacher)")
    return ema


def build_criterion(cfg: dict, num_classes: int):
    """(mixup_fn or None, loss): soft-target CE under mixup/cutmix, else label smoothing or CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    ac = cfg["aug"]
    if ac["mixup"] > 0 or ac["cutmix"] > 0:
        mixup_fn = Mixup(mixup_alpha=ac["mixup"], cutmix_alpha=ac["cutmix"], prob=ac["mixup_prob"],
                         switch_prob=ac["mixup_switch_prob"], mode=ac["mixup_mode"],
                         label_smoothing=ac["smoothing"], num_classes=num_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    if ac["smoothing"] > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=ac["smoothing"])
    return None, nn.CrossEntropyLoss()
