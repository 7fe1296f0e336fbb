"""configs/seg: MambaVision's UperNet/ADE20K recipe, mmseg base configs by package scope, smoke config."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mmseg")
from mmengine.config import Config  # noqa: E402

from sf_mamba.models.sf_mamba import VARIANTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEG = REPO / "configs" / "seg"
ADE = {
    # file stem: (arch, scan, lr, windows)
    "upernet_sf_mamba_t_ade20k_512x512_160k": ("sf_mamba_t", "swap", 5e-5, (8, 8, 64, 32)),
    "upernet_sf_mamba_s_ade20k_512x512_160k": ("sf_mamba_s", "swap", 6e-5, (8, 8, 160, 56)),
    "upernet_sf_mamba_b_ade20k_512x512_160k": ("sf_mamba_b", "swap", 5e-5, (8, 8, 64, 32)),
    "upernet_sf_mamba_t_uni_ade20k_512x512_160k": ("sf_mamba_t", "uni", 5e-5, (8, 8, 64, 32)),
    "upernet_sf_mamba_s_uni_ade20k_512x512_160k": ("sf_mamba_s", "uni", 6e-5, (8, 8, 160, 56)),
    "upernet_sf_mamba_b_uni_ade20k_512x512_160k": ("sf_mamba_b", "uni", 5e-5, (8, 8, 64, 32)),
}


def test_every_config_is_covered():
    found = {p.stem for p in SEG.glob("*.py")}
    assert found == set(ADE) | {"smoke"}


def test_base_configs_come_from_mmseg_by_package_scope():
    text = (SEG / "_base_" / "upernet_sf_mamba_ade20k_512x512_160k.py").read_text()
    for base in ("models/upernet_swin.py", "datasets/ade20k.py", "default_runtime.py",
                 "schedules/schedule_160k.py"):
        assert f"'mmseg::_base_/{base}'" in text
    assert not (REPO / "configs" / "_base_").exists()  # no vendored mmseg tree


@pytest.mark.parametrize("stem", sorted(ADE))
def test_ade20k_recipe(stem):
    arch, scan, lr, windows = ADE[stem]
    cfg = Config.fromfile(str(SEG / f"{stem}.py"))
    assert cfg.custom_imports == dict(imports=["sf_mamba.openmmlab.backbone"], allow_failed_imports=False)
    bb = cfg.model.backbone
    # _delete_ removed every Swin key of upernet_swin.py: only adapter + model keys remain
    assert set(bb) == {"type", "arch", "out_indices", "out_norm", "drop_path_rate", "window_size",
                       "scan", "pretrained"}
    assert (bb.type, bb.arch, bb.scan, tuple(bb.window_size)) == ("SFMambaBackbone", arch, scan, windows)
    assert tuple(bb.out_indices) == (0, 1, 2, 3) and bb.out_norm == "ln2d" and bb.drop_path_rate == 0.2
    c = VARIANTS[arch.removeprefix("sf_mamba_")].dim
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert head.type == "UPerHead" and list(head.in_channels) == [c, 2 * c, 4 * c, 8 * c]
    assert head.channels == 512 and tuple(head.pool_scales) == (1, 2, 3, 6) and head.num_classes == 150
    assert head.norm_cfg.type == "SyncBN"
    assert aux.type == "FCNHead" and aux.in_index == 2 and aux.in_channels == 4 * c
    assert aux.loss_decode.loss_weight == 0.4 and aux.num_classes == 150
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.optimizer.type == "AdamW"
    assert ow.optimizer.lr == lr and ow.optimizer.weight_decay == 0.01
    assert tuple(ow.optimizer.betas) == (0.9, 0.999)
    assert ow.paramwise_cfg.custom_keys == {"norm": {"decay_mult": 0.0}}
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end, warm.by_epoch) == ("LinearLR", 0, 1500, False)
    assert (poly.type, poly.begin, poly.end, poly.power, poly.eta_min) == ("PolyLR", 1500, 160000, 1.0, 0.0)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == 16  # per GPU x 8 GPUs
    assert tuple(cfg.crop_size) == (512, 512) and tuple(cfg.model.data_preprocessor.size) == (512, 512)
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset"
    assert cfg.model.test_cfg.mode == "whole"


def test_one_ade_model_builds_and_the_norm_rule_hits_the_out_norms():
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(SEG / "upernet_sf_mamba_t_uni_ade20k_512x512_160k.py"))
    # the full T backbone with the recipe's keys; the heads shrunk to keep this test cheap
    cfg.model.decode_head.channels = 16
    cfg.model.auxiliary_head.channels = 16
    cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type="BN")
    model = MODELS.build(cfg.model)
    assert model.backbone.out_channels == list(cfg.model.decode_head.in_channels)
    drop = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert max(drop) == pytest.approx(0.2)
    cfg.optim_wrapper.type = "OptimWrapper"  # AMP needs CUDA
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in ow.optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay[id(named["backbone.out_norms.0.weight"])] == 0.0
    assert decay[id(named["backbone.out_norms.3.bias"])] == 0.0
    conv = next(n for n in named if n.startswith("backbone.") and n.endswith("conv1.weight"))
    assert decay[id(named[conv])] == 0.01


def test_smoke_config_is_cpu_friendly():
    cfg = Config.fromfile(str(SEG / "smoke.py"))
    assert cfg.model.backbone.arch == "sf_mamba_micro"
    assert cfg.model.decode_head.channels == 32 and cfg.model.decode_head.num_classes == 2
    assert "SyncBN" not in cfg.pretty_text and cfg.optim_wrapper.type == "OptimWrapper"
    assert cfg.train_cfg.max_iters <= 300
    assert cfg.train_dataloader.dataset.img_suffix == ".png"


def test_cli_contract_help():
    import argparse
    import importlib

    from sf_mamba.cli import SUBCOMMANDS

    for cmd, flags in (("seg-train", ["--config", "--work-dir", "--data-root", "--cfg-options",
                                      "--no-resume", "--launcher", "--no-flops"]),
                       ("seg-test", ["--config", "--checkpoint", "--work-dir", "--cfg-options"]),
                       ("seg-data", ["--out", "--n-train", "--n-val", "--size", "--seed", "--force"])):
        module = importlib.import_module(SUBCOMMANDS[cmd][0])
        parser = argparse.ArgumentParser(prog=f"sf_mamba {cmd}")
        module.add_arguments(parser)
        text = parser.format_help()
        for flag in flags:
            assert flag in text, (cmd, flag)
        assert callable(module.main)
    parser = argparse.ArgumentParser()
    importlib.import_module("sf_mamba.seg.train").add_arguments(parser)
    args = parser.parse_args(["--config", "c.py", "--work-dir", "w", "--cfg-options", "a.b=1", "c=[1,2]"])
    assert args.cfg_options == {"a.b": 1, "c": [1, 2]}
