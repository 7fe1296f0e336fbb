"""The GPU recipe's paths, run on CPU where torch allows, so a first cluster run does not discover them:
mixed precision (bf16 autocast; fp16 autocast with `GradScaler("cpu")`) and channels_last, through the
real benchmark (`measure_throughput`, `sf_mamba bench`) and the real trainer (`sf_mamba train`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch

import sf_mamba  # noqa: F401
from sf_mamba.bench.throughput import measure_throughput
from sf_mamba.cli import main as cli

SMALL = {"window_size": [8, 8, 2, 1]}  # micro at 32 px without a padded 14x14 window


def spy_dtypes_and_layout(model):
    """Record the classifier's output dtype and whether the stem sees a channels_last input."""
    seen = {"head": [], "stem_channels_last": []}
    model.head.register_forward_hook(lambda m, args, out: seen["head"].append(out.dtype))
    model.patch_embed.register_forward_pre_hook(lambda m, args: seen["stem_channels_last"].append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    return seen


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_bench_amp_and_channels_last_on_cpu(amp_dtype):
    model = timm.create_model("sf_mamba_micro", num_classes=10, **SMALL).train()
    seen = spy_dtypes_and_layout(model)
    r = measure_throughput(model, (3, 32, 32), batch_size=4, device="cpu", amp=True, amp_dtype=amp_dtype,
                           channels_last=True, warmup=1, iters=2, repeats=2)
    assert seen["head"] == [amp_dtype] * 5 and all(seen["stem_channels_last"])    # 1 warm-up + 2 x 2 timed
    assert (r["amp"], r["dtype"], r["channels_last"], r["device"]) == (True, str(amp_dtype)[6:], True, "cpu")
    assert r["throughput"] > 0 and len(r["throughput_all"]) == 2
    assert model.training                                                          # restored
    assert all(p.is_contiguous() for p in model.parameters())                      # back to NCHW


def test_bench_cli_honours_dtype_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli(["bench", "--model", "sf_mamba_micro", "--model-kwargs", json.dumps(SMALL), "--device", "cpu",
                "--dtype", "bfloat16", "--batch", "2", "--img-size", "32", "--warmup", "0", "--iters", "1",
                "--out", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert (r["amp"], r["dtype"], r["batch_size"], r["channels_last"]) == (True, "bfloat16", 2, False)
    capsys.readouterr()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    assert cli(["data", "digits", "--out", str(out)]) == 0
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_trainer_amp_and_channels_last_on_cpu(tmp_path, digits, monkeypatch, amp_dtype):
    """Two optimizer steps of the smoke recipe with the paper recipe's precision and memory format."""
    from sf_mamba.train import loop

    seen = {"dtypes": [], "channels_last": [], "scaler": []}
    compute_loss = loop.compute_loss

    def spying_compute_loss(parts, x, y, mesa_on):
        if not seen["scaler"]:
            parts.model.head.register_forward_hook(lambda m, args, out: seen["dtypes"].append(out.dtype))
        seen["channels_last"].append(x.is_contiguous(memory_format=torch.channels_last))
        seen["scaler"].append((parts.scaler.is_enabled(), parts.scaler._device))
        return compute_loss(parts, x, y, mesa_on)

    monkeypatch.setattr(loop, "compute_loss", spying_compute_loss)
    run = tmp_path / "run"
    assert cli(["train", "--config", "smoke", "--run-dir", str(run), "--data-dir", str(digits), "--set",
                "train.amp=true", f"train.amp_dtype={amp_dtype}", "train.channels_last=true", "sched.epochs=1",
                "sched.warmup_epochs=0", "train.max_steps_per_epoch=2", "train.batch_size=16",
                "train.eval_batch_size=360"]) == 0
    fp16 = amp_dtype == "float16"
    assert seen["dtypes"][:2] == [getattr(torch, amp_dtype)] * 2 and seen["channels_last"] == [True, True]
    assert seen["scaler"] == [(fp16, "cpu")] * 2                    # GradScaler("cpu") on the fp16 path only
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["amp"], meta["amp_dtype"], meta["channels_last"]) == (True, amp_dtype, True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["top1"]) and math.isfinite(metrics["train_loss"])
    ck = torch.load(run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert bool(ck["scaler"]) == fp16                               # the scaler's state resumes with the run
    if fp16:
        scale = ck["scaler"]["scale"]                               # 2**16 at start, halved per overflow
        assert 0 < scale <= 2.0 ** 16 and math.log2(scale).is_integer()
