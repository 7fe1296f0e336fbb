"""SFMambaBackbone: registry, pyramid shapes at any size, config keys reach the model, checkpoints."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmengine")

import timm  # noqa: E402
import torch  # noqa: E402

import sf_mamba  # noqa: E402,F401
from sf_mamba.openmmlab.backbone import (  # noqa: E402
    LayerNorm2d, SFMambaBackbone, extract_state_dict, map_classifier_state_dict)

ARCH = "sf_mamba_micro"
MICRO_CHANNELS = [16, 32, 64, 128]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models on a shared 2-core box: intra-op threading only adds barrier stalls
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def mmlog():
    """Records of mmengine's current logger (it does not propagate to pytest's caplog)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_registered_through_custom_imports():
    from mmengine.config import Config
    from mmseg.registry import MODELS

    smoke = Path(__file__).resolve().parents[1] / "configs" / "seg" / "smoke.py"
    cfg = Config.fromfile(str(smoke))  # imports sf_mamba.openmmlab.backbone via custom_imports
    assert cfg.custom_imports["imports"] == ["sf_mamba.openmmlab.backbone"]
    assert cfg.custom_imports["allow_failed_imports"] is False
    assert MODELS.get("SFMambaBackbone") is SFMambaBackbone
    bb = MODELS.build(cfg.model.backbone)
    assert isinstance(bb, SFMambaBackbone) and bb.out_channels == MICRO_CHANNELS


@pytest.mark.parametrize("hw", [(512, 512), (64, 64), (517, 389), (45, 70), (100, 100)])
def test_four_maps_strides_4_to_32_any_size(hw):
    bb = SFMambaBackbone(arch=ARCH).eval()
    assert bb.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, *hw))
    assert isinstance(feats, tuple) and len(feats) == 4
    h, w = hw
    for f, c, s in zip(feats, MICRO_CHANNELS, (4, 8, 16, 32)):
        assert f.shape[:2] == (1, c)
        assert f.shape[2] == math.ceil(h / s) and f.shape[3] == math.ceil(w / s), (hw, f.shape)
        assert torch.isfinite(f).all()


def test_512_with_the_ade_windows():
    bb = SFMambaBackbone(arch=ARCH, window_size=(8, 8, 64, 32)).eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 512, 512))
    assert [tuple(f.shape[2:]) for f in feats] == [(128, 128), (64, 64), (32, 32), (16, 16)]


def test_per_output_layernorm2d():
    bb = SFMambaBackbone(arch=ARCH)
    assert [type(n) for n in bb.out_norms] == [LayerNorm2d] * 4
    assert [n.normalized_shape[0] for n in bb.out_norms] == MICRO_CHANNELS
    # every out-norm parameter name contains 'norm' (the recipe's decay_mult=0 key)
    names = [n for n, _ in bb.named_parameters() if n.startswith("out_norms")]
    assert len(names) == 8 and all("norm" in n for n in names)
    # LayerNorm2d == per-pixel LayerNorm over channels
    ln = LayerNorm2d(5)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    x = torch.randn(2, 5, 3, 4)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (5,), ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(ln(x), ref.permute(0, 3, 1, 2))
    # out_norm=None gives the raw stage maps
    raw = SFMambaBackbone(arch=ARCH, out_norm=None)
    assert all(isinstance(n, torch.nn.Identity) for n in raw.out_norms)
    with pytest.raises(ValueError, match="out_norm"):
        SFMambaBackbone(arch=ARCH, out_norm="bn")


def test_every_key_reaches_the_model():
    # drop_path_rate: MambaVision's wrapper dropped it; here the stochastic-depth ramp must end at it
    bb = SFMambaBackbone(arch=ARCH, drop_path_rate=0.37)
    probs = [m.drop_prob for m in bb.modules() if type(m).__name__ == "DropPath"]
    assert probs and max(probs) == pytest.approx(0.37)
    assert bb.model_kwargs == {"drop_path_rate": 0.37}
    # window_size and scan reach the model too: compare with timm built directly
    kw = dict(window_size=(8, 8, 4, 2), scan="uni", drop_path_rate=0.1)
    bb = SFMambaBackbone(arch=ARCH, **kw)
    ref = timm.create_model(ARCH, features_only=True, **kw)
    assert [n for n, _ in bb.body.named_parameters()] == [n for n, _ in ref.named_parameters()]
    swap = SFMambaBackbone(arch=ARCH, scan="swap")
    assert sum(p.numel() for p in swap.body.parameters()) != sum(p.numel() for p in bb.body.parameters())
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(1)
    a = SFMambaBackbone(arch=ARCH, out_norm=None, **kw).eval()
    torch.manual_seed(1)
    b = timm.create_model(ARCH, features_only=True, **kw).eval()
    with torch.no_grad():
        for fa, fb in zip(a(x), b(x)):
            torch.testing.assert_close(fa, fb)


def test_unknown_none_and_reserved_keys_are_errors():
    with pytest.raises(TypeError):
        SFMambaBackbone(arch=ARCH, embed_dims=96)  # a Swin key left over from upernet_swin.py
    with pytest.raises(ValueError, match="None"):
        SFMambaBackbone(arch=ARCH, drop_path_rate=None)
    with pytest.raises(ValueError, match="features_only"):
        SFMambaBackbone(arch=ARCH, features_only=False)


def _classifier_state_dict(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return timm.create_model(ARCH).state_dict()


@pytest.mark.parametrize("wrap", ["flat", "state_dict", "model", "ema", "module_prefix"])
def test_loads_imagenet_checkpoint_from_our_trainer(tmp_path, wrap, mmlog):
    sd = _classifier_state_dict()
    ckpt = {
        "flat": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {"state": {}}, "epoch": 3},
        "ema": {"ema": sd, "epoch": 3},
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    torch.manual_seed(123)
    bb = SFMambaBackbone(arch=ARCH, pretrained=str(path))
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.init_weights()
    report = bb.load_report
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    # the classifier head and the final BatchNorm are the expected leftovers, listed as such
    assert sorted({k.split(".")[0] for k in report["expected_unexpected"]}) == ["head", "norm"]
    assert report["loaded"] == len(bb.body.state_dict())
    for k, v in bb.body.state_dict().items():
        assert torch.equal(v, sd[k[len("model."):]]), k
    # out-norms are new: untouched
    assert torch.equal(bb.out_norms[0].weight, before["out_norms.0.weight"])
    text = mmlog.text
    assert f"loaded {report['loaded']}/{report['loaded']} backbone tensors" in text
    assert "ignored classification head/norm keys (expected)" in text and "head.weight" in text
    assert not [r for r in mmlog.records if r.levelno >= logging.WARNING]


def test_sf_mamba_train_checkpoint_model_or_ema(tmp_path):
    """The layout `sf_mamba train` writes: model + EMA (`module.` keys) + optimizer/rng tensors."""
    sd, ema = _classifier_state_dict(0), _classifier_state_dict(1)
    ckpt = {"version": 1, "config_sha256": "0" * 64, "model_name": ARCH, "num_classes": 1000,
            "model_kwargs": {}, "model": sd, "ema": {f"module.{k}": v for k, v in ema.items()},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 2, "global_step": 10,
            "rng": [{"torch": torch.get_rng_state(), "python_gauss": None}], "saved_utc": "now"}
    path = tmp_path / "last.pth"
    torch.save(ckpt, path)
    for key, ref in ((None, sd), ("ema", ema)):
        bb = SFMambaBackbone(arch=ARCH, pretrained=str(path), pretrained_key=key)
        bb.init_weights()
        assert bb.load_report["missing"] == [] and bb.load_report["unexpected"] == []
        w = "model.levels.2.blocks.0.mixer.in_proj.weight"
        assert torch.equal(bb.body.state_dict()[w], ref[w[len("model."):]])
    torch.save({**ckpt, "ema": None}, path)
    with pytest.raises(KeyError, match="without EMA"):
        SFMambaBackbone(arch=ARCH, pretrained=str(path), pretrained_key="ema").init_weights()


def test_missing_and_unexpected_keys_are_reported_loudly(tmp_path, mmlog):
    sd = _classifier_state_dict()
    dropped = [k for k in sd if "levels.3" in k][:2]
    for k in dropped:
        del sd[k]
    sd["levels.9.bogus.weight"] = torch.zeros(3)
    first = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 4)
    sd[first] = torch.zeros(1, 1, 1, 1)  # shape mismatch
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": sd}, path)
    bb = SFMambaBackbone(arch=ARCH, pretrained=str(path))
    bb.init_weights()
    r = bb.load_report
    assert sorted(r["missing"]) == sorted(["model." + k for k in dropped] + ["model." + first])
    assert r["unexpected"] == ["levels.9.bogus.weight"]
    assert len(r["mismatched"]) == 1 and first in r["mismatched"][0]
    warnings = [rec for rec in mmlog.records if rec.levelno >= logging.WARNING]
    joined = "\n".join(rec.getMessage() for rec in warnings)
    assert "MISSING" in joined and "UNEXPECTED" in joined and "SHAPE MISMATCH" in joined
    assert dropped[0] in joined and "levels.9.bogus.weight" in joined


def test_wrong_or_unsafe_checkpoint_is_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"model": {"encoder.layer.weight": torch.zeros(2)}}, other)
    with pytest.raises(RuntimeError, match="no tensor"):
        SFMambaBackbone(arch=ARCH, pretrained=str(other)).init_weights()
    with pytest.raises(FileNotFoundError):
        SFMambaBackbone(arch=ARCH, pretrained=str(tmp_path / "nope.pth")).init_weights()

    import argparse

    unsafe = tmp_path / "unsafe.pth"  # a pickled non-tensor object (timm-style saved args)
    torch.save({"model": _classifier_state_dict(), "args": argparse.Namespace(lr=1.0)}, unsafe)
    with pytest.raises(RuntimeError, match="pretrained_trusted"):
        SFMambaBackbone(arch=ARCH, pretrained=str(unsafe)).init_weights()
    trusted = SFMambaBackbone(arch=ARCH, pretrained=str(unsafe), pretrained_trusted=True)
    trusted.init_weights()
    assert trusted.load_report["missing"] == []


def test_key_mapping_handles_flattened_feature_names():
    # timm's FeatureListNet renames `stages.0.x` to `stages_0.x`; FeatureGetterNet prefixes `model.`
    target = {"stages_0.conv.weight": torch.zeros(2), "model.stem.weight": torch.zeros(1)}
    src = {"stages.0.conv.weight": torch.ones(2), "stem.weight": torch.ones(1), "fc.bias": torch.ones(3)}
    r = map_classifier_state_dict(src, target)
    assert set(r["mapped"]) == set(target) and r["missing"] == [] and r["expected_unexpected"] == ["fc.bias"]
    with pytest.raises(KeyError):
        extract_state_dict({"epoch": 1, "args": {}})
