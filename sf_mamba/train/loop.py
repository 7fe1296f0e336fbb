"""One epoch of training and one pass of validation.

``train_one_epoch`` runs the optimizer steps of one epoch (from ``skip`` on, after a restart) and
returns the epoch's log row; ``validate`` returns top-1/top-5 and the mean loss. The pieces they
work on are bundled in ``TrainParts`` (built once by the trainer) and ``TrainState`` (what a
checkpoint saves). Each step is ``compute_loss`` (forward, criterion, MESA) then ``train_step``'s
update; tests inject faults by monkeypatching these two functions, never through the loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger("sf_mamba.train")


class NonFiniteLossError(RuntimeError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainParts:
    """What the loop trains with; built once per run by the trainer."""

    model: nn.Module                 # the bare model (EMA source, checkpoints, validation)
    train_model: nn.Module           # ``model`` or its DistributedDataParallel wrapper
    optimizer: Any
    scheduler: Any                   # timm scheduler: step_update per step, step per epoch
    scaler: torch.amp.GradScaler
    ema: Any                         # timm ModelEmaV3 or None
    criterion: Callable
    mixup_fn: Callable | None
    device: torch.device
    amp_ctx: Callable[[], contextlib.AbstractContextManager]
    channels_last: bool
    clip_grad: float | None
    clip_mode: str
    mesa: dict                       # config section `mesa` (distillation from the EMA teacher)
    world_size: int = 1


@dataclass
class TrainState:
    """Where training stands; everything here goes into the checkpoint."""

    epoch: int = 0                   # epochs completed
    step_in_epoch: int = 0           # optimizer steps done in the current epoch
    global_step: int = 0
    loss_sum: float = 0.0            # running sum/count of the current epoch's training loss
    loss_n: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})


def compute_loss(parts: TrainParts, x: torch.Tensor, y: torch.Tensor, mesa_on: bool) -> torch.Tensor:
    """Forward and loss of one batch (under autocast), with MESA's KL term to the EMA teacher."""
    mc = parts.mesa
    with parts.amp_ctx():
        out = parts.train_model(x)
        loss = parts.criterion(out, y)
        if mesa_on:
            with torch.no_grad():
                teacher = parts.ema.module(x)
            t = mc["temperature"]
            kl = F.kl_div(F.log_softmax(out.float() / t, dim=1), F.softmax(teacher.float() / t, dim=1),
                          reduction="batchmean")
            loss = loss + mc["weight"] * mc["kl_scale"] * kl
    return loss


def train_step(parts: TrainParts, state: TrainState, x: torch.Tensor, y: torch.Tensor, mesa_on: bool) -> float:
    """One optimizer step; returns the batch loss. Raises ``NonFiniteLossError`` before updating
    anything when the loss is NaN/inf on any rank."""
    from timm.utils import dispatch_clip_grad

    from sf_mamba.train.distributed import all_reduce_sum

    x, y = x.to(parts.device, non_blocking=True), y.to(parts.device, non_blocking=True)
    if parts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if parts.mixup_fn is not None:
        x, y = parts.mixup_fn(x, y)
    loss = compute_loss(parts, x, y, mesa_on)
    finite = torch.isfinite(loss.detach()).float()
    if parts.world_size > 1:
        finite = all_reduce_sum(finite.clone()) / parts.world_size
    if finite.item() < 1.0:
        raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at epoch {state.epoch + 1} step "
                                 f"{state.step_in_epoch + 1} (global step {state.global_step + 1}, lr "
                                 f"{parts.optimizer.param_groups[0]['lr']:.3g})")
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    if parts.clip_grad:
        parts.scaler.unscale_(parts.optimizer)
        dispatch_clip_grad(parts.model.parameters(), value=parts.clip_grad, mode=parts.clip_mode)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    state.global_step += 1
    state.step_in_epoch += 1
    if parts.ema is not None:
        parts.ema.update(parts.model, step=state.global_step)
    parts.scheduler.step_update(num_updates=state.global_step)
    value = loss.item()
    state.loss_sum += value
    state.loss_n += 1
    return value


def train_one_epoch(parts: TrainParts, state: TrainState, loader, *, num_epochs: int, steps_per_epoch: int,
                    ckpt_every_steps: int, save_checkpoint: Callable[[], None], log_every_steps: int = 0,
                    show_bar: bool = False, is_main: bool = True) -> dict[str, Any]:
    """Train epoch ``state.epoch`` from step ``state.step_in_epoch`` (0, or where a restart left it)
    to ``steps_per_epoch``; call ``save_checkpoint()`` every ``ckpt_every_steps`` global steps
    inside the epoch. The loader must already start at that step (``ResumableSampler``). Returns
    the epoch's log row; ``state`` is left at the epoch's end (the caller advances the epoch)."""
    from tqdm import tqdm

    epoch = state.epoch
    if state.step_in_epoch == 0:             # a restart mid-epoch keeps the epoch's running loss
        state.loss_sum, state.loss_n = 0.0, 0
    parts.train_model.train()
    mc = parts.mesa
    mesa_on = bool(mc["weight"]) and (epoch / num_epochs) > mc["start_ratio"]
    t_epoch = time.time()
    bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{num_epochs}",
               disable=not show_bar, dynamic_ncols=True, leave=False)
    try:
        for x, y in loader:
            if state.step_in_epoch >= steps_per_epoch:
                break
            loss = train_step(parts, state, x, y, mesa_on)
            bar.update(1)
            lr = parts.optimizer.param_groups[0]["lr"]
            if show_bar:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            elif is_main and log_every_steps and state.global_step % log_every_steps == 0:
                log.info("epoch %d/%d step %d/%d loss %.4f lr %.3e", epoch + 1, num_epochs,
                         state.step_in_epoch, steps_per_epoch, loss, lr)
            if state.global_step % ckpt_every_steps == 0 and state.step_in_epoch < steps_per_epoch:
                save_checkpoint()
    finally:
        bar.close()
    parts.scheduler.step(epoch + 1)
    return {"epoch": epoch + 1, "global_step": state.global_step, "lr": parts.optimizer.param_groups[0]["lr"],
            "train_loss": (state.loss_sum / state.loss_n) if state.loss_n else float("nan"),
            "epoch_time_s": round(time.time() - t_epoch, 3)}


@torch.no_grad()
def validate(model: nn.Module, loader, device, amp_ctx=contextlib.nullcontext, progress: bool = False,
             desc: str = "eval") -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy over ``loader`` (summed over DDP ranks)."""
    from sf_mamba.train.distributed import all_reduce_sum

    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # loss_sum, top1, top5, n
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for x, y in it:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp_ctx():
            out = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        topk = out.topk(k, dim=1).indices
        correct = topk.eq(y[:, None])
        stats += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(), correct[:, 0].sum().item(),
                               correct[:, :k].sum().item(), y.numel()], dtype=torch.float64)
    stats = all_reduce_sum(stats.to(device)).cpu() if device.type == "cuda" else all_reduce_sum(stats)
    model.train(was_training)
    n = max(stats[3].item(), 1.0)
    return {"loss": stats[0].item() / n, "top1": 100.0 * stats[1].item() / n,
            "top5": 100.0 * stats[2].item() / n, "count": int(stats[3].item())}
