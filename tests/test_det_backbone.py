"""One backbone adapter for both OpenMMLab tasks: the same class in mmseg's and mmdet's registries,
built from either, every model key reaching the model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmdet")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_one_class_in_both_registries():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    from sf_mamba.openmmlab import backbone

    assert set(backbone.REGISTRIES) == {"mmseg", "mmdet"}
    assert SEG_MODELS.get("SFMambaBackbone") is backbone.SFMambaBackbone
    assert DET_MODELS.get("SFMambaBackbone") is backbone.SFMambaBackbone
    # no second copy of the adapter anywhere in the package
    hits = [p for p in (REPO / "sf_mamba").rglob("*.py") if "class SFMambaBackbone" in p.read_text()]
    assert hits == [REPO / "sf_mamba" / "openmmlab" / "backbone.py"]


@pytest.mark.parametrize("scope", ["mmseg", "mmdet"])
def test_built_from_either_registry_with_every_key(scope):
    import importlib

    from sf_mamba.openmmlab.backbone import SFMambaBackbone

    models = importlib.import_module(f"{scope}.registry").MODELS
    cfg = dict(type="SFMambaBackbone", arch="sf_mamba_micro", out_indices=(0, 1, 2, 3), out_norm="ln2d",
               drop_path_rate=0.1, window_size=(8, 8, 4, 2), scan="uni", attention=False, aux_tokens=0)
    bb = models.build(cfg)
    assert type(bb) is SFMambaBackbone
    assert bb.model_kwargs == dict(drop_path_rate=0.1, window_size=(8, 8, 4, 2), scan="uni", attention=False,
                                   aux_tokens=0)
    drops = [m.drop_prob for m in bb.modules() if type(m).__name__ == "DropPath"]
    assert max(drops) == pytest.approx(0.1)
    feats = bb(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        models.build({**cfg, "depth": 50})  # a key the model does not know is an error, not dropped


def test_detection_only_install_registers_in_mmdet_alone():
    """Without mmsegmentation the adapter still imports and registers in mmdet's registry."""
    code = (
        "import importlib.abc, sys\n"
        "class NoMmseg(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mmseg' or name.startswith('mmseg.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoMmseg())\n"
        "from sf_mamba.openmmlab import backbone\n"
        "from mmdet.registry import MODELS\n"
        "assert list(backbone.REGISTRIES) == ['mmdet'], backbone.REGISTRIES\n"
        "assert MODELS.get('SFMambaBackbone') is backbone.SFMambaBackbone\n"
        "print('DET-ONLY-OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "DET-ONLY-OK" in proc.stdout, proc.stderr[-3000:]
