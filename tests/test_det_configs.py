"""configs/det: MambaVision's Cascade Mask R-CNN 3x recipe, the Mask R-CNN 1x option, the CPU smoke;
every config parses and its model builds on CPU (no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmcv.ops")  # building mmdet.models needs mmcv's compiled ops
from mmengine.config import Config  # noqa: E402

from sf_mamba.models.sf_mamba import VARIANTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DET = REPO / "configs" / "det"
LR = {"t": 1e-4, "s": 1e-4, "b": 2e-4}  # MambaVision's cascade lr per size
CASCADE = {f"cascade-mask-rcnn_sf_mamba_{v}{sfx}_fpn_3x_coco": (v, scan)
           for v in "tsb" for sfx, scan in (("", "swap"), ("_uni", "uni"))}
MASK_RCNN = {f"mask-rcnn_sf_mamba_{v}{sfx}_fpn_1x_coco": (v, scan)
             for v in "tsb" for sfx, scan in (("", "swap"), ("_uni", "uni"))}
BACKBONE_KEYS = {"type", "arch", "out_indices", "out_norm", "drop_path_rate", "window_size", "scan",
                 "pretrained"}


def test_every_config_is_covered():
    assert {p.stem for p in DET.glob("*.py")} == set(CASCADE) | set(MASK_RCNN) | {"smoke"}
    text = (DET / "_base_" / "cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py").read_text()
    for base in ("models/cascade-mask-rcnn_r50_fpn.py", "datasets/coco_instance.py",
                 "schedules/schedule_1x.py", "default_runtime.py"):
        assert f"'mmdet::_base_/{base}'" in text  # by package scope: no vendored mmdet tree


def _backbone_checks(cfg, v, scan):
    assert cfg.custom_imports == dict(imports=["sf_mamba.openmmlab.backbone"], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert set(bb) == BACKBONE_KEYS  # _delete_ removed every ResNet key
    assert (bb.type, bb.arch, bb.scan) == ("SFMambaBackbone", f"sf_mamba_{v}", scan)
    assert tuple(bb.window_size) == (8, 8, 112, 56) and bb.drop_path_rate == 0.2
    c = VARIANTS[v].dim
    assert list(cfg.model.neck.in_channels) == [c, 2 * c, 4 * c, 8 * c]
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.val_evaluator.type == "CocoMetric" and list(cfg.val_evaluator.metric) == ["bbox", "segm"]
    assert cfg.train_dataloader.dataset.ann_file == "annotations/instances_train2017.json"
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.optimizer.type == "AdamW" and ow.optimizer.weight_decay == 0.05
    assert ow.paramwise_cfg.custom_keys == {"norm": {"decay_mult": 0.0}} and "momentum" not in ow.optimizer


@pytest.mark.parametrize("stem", sorted(CASCADE))
def test_cascade_recipe(stem):
    v, scan = CASCADE[stem]
    cfg = Config.fromfile(str(DET / f"{stem}.py"))
    _backbone_checks(cfg, v, scan)
    assert cfg.model.type == "CascadeRCNN" and cfg.optim_wrapper.optimizer.lr == LR[v]
    heads = cfg.model.roi_head.bbox_head
    assert [tuple(h.bbox_coder.target_stds) for h in heads] == [
        (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]
    for h in heads:
        assert (h.type, h.num_shared_convs, h.num_shared_fcs, h.num_classes) == ("ConvFCBBoxHead", 4, 1, 80)
        assert h.loss_bbox.type == "GIoULoss" and h.loss_bbox.loss_weight == 10.0 and h.reg_decoded_bbox
        assert h.norm_cfg.type == "SyncBN"
    assert cfg.train_cfg.max_epochs == 36
    warm, step = cfg.param_scheduler
    assert (warm.type, warm.start_factor, warm.end, warm.by_epoch) == ("LinearLR", 0.001, 1000, False)
    assert (step.type, list(step.milestones), step.gamma) == ("MultiStepLR", [27, 33], 0.1)
    # multi-scale: short side 480..800 step 32, or resize + crop 384..600 + resize
    pipe = cfg.train_dataloader.dataset.pipeline
    choice = next(t for t in pipe if t.type == "RandomChoice")
    scales = [s[0] for s in choice.transforms[0][0].scales]
    assert scales == list(range(480, 801, 32)) and choice.transforms[1][1].crop_size == (384, 600)


@pytest.mark.parametrize("stem", sorted(MASK_RCNN))
def test_mask_rcnn_1x_recipe(stem):
    v, scan = MASK_RCNN[stem]
    cfg = Config.fromfile(str(DET / f"{stem}.py"))
    _backbone_checks(cfg, v, scan)
    assert cfg.model.type == "MaskRCNN" and cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.train_cfg.max_epochs == 12
    assert list(cfg.param_scheduler[1].milestones) == [8, 11]


def _build(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS.build(cfg.model)


@pytest.mark.parametrize("stem", sorted(CASCADE) + sorted(MASK_RCNN))
def test_every_det_config_builds_on_cpu(stem):
    """The real model of every config (full backbone, all heads, SyncBN) builds without weights."""
    import torch

    cfg = Config.fromfile(str(DET / f"{stem}.py"))
    model = _build(cfg)
    assert type(model).__name__ == cfg.model.type
    assert model.backbone.out_channels == list(cfg.model.neck.in_channels)
    assert model.backbone.model_kwargs["scan"] == cfg.model.backbone.scan
    drop = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert max(drop) == pytest.approx(0.2)  # the config's drop_path_rate reached the model
    assert all(p.device == torch.device("cpu") for p in model.parameters())


def test_detector_forward_on_cpu_and_the_norm_rule():
    """One cascade model, backbone shrunk (micro): a predict forward runs and 'norm' gets no decay."""
    import torch
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(str(DET / "cascade-mask-rcnn_sf_mamba_t_uni_fpn_3x_coco.py"))
    cfg.model.backbone.arch = "sf_mamba_micro"
    cfg.model.backbone.window_size = (8, 8, 4, 2)
    cfg.model.neck.in_channels = [16, 32, 64, 128]
    for head in cfg.model.roi_head.bbox_head:
        head.norm_cfg = dict(type="BN")
    model = _build(cfg).eval()
    from mmdet.structures import DetDataSample

    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0),
                                         batch_input_shape=(64, 64), pad_shape=(64, 64)))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), [sample], mode="predict")
    assert out[0].pred_instances.bboxes.shape[1] == 4 and hasattr(out[0].pred_instances, "masks")
    cfg.optim_wrapper.type = "OptimWrapper"  # AMP needs CUDA
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in ow.optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay[id(named["backbone.out_norms.0.weight"])] == 0.0
    conv = next(n for n in named if n.startswith("backbone.") and n.endswith("conv1.weight"))
    assert decay[id(named[conv])] == 0.05


def test_smoke_config_is_cpu_friendly():
    cfg = Config.fromfile(str(DET / "smoke.py"))
    assert cfg.model.type == "MaskRCNN" and cfg.model.backbone.arch == "sf_mamba_micro"
    assert cfg.model.roi_head.bbox_head.num_classes == 1 and cfg.metainfo.classes == ("coin",)
    assert "SyncBN" not in cfg.pretty_text and cfg.optim_wrapper.type == "OptimWrapper"
    assert cfg.train_cfg.max_iters <= 200
    assert cfg.val_evaluator.ann_file == cfg.data_root + "/annotations/instances_val.json"


def test_data_root_moves_the_coco_ann_file(tmp_path):
    from sf_mamba.openmmlab.runner import set_data_root

    cfg = Config.fromfile(str(DET / "mask-rcnn_sf_mamba_t_fpn_1x_coco.py"))
    set_data_root(cfg, str(tmp_path))
    assert cfg.val_evaluator.ann_file == str(tmp_path / "annotations" / "instances_val2017.json")
    assert cfg.test_evaluator.ann_file == cfg.val_evaluator.ann_file
    assert cfg.train_dataloader.dataset.data_root == str(tmp_path)
    assert cfg.val_dataloader.dataset.data_root == str(tmp_path)
