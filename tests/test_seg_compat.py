"""mmcv-lite (no compiled ``mmcv._ext``): a clear error on request, else UperNet runs on the stub."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mmseg")
REPO = Path(__file__).resolve().parents[1]

# Make `mmcv._ext` unimportable, as with mmcv-lite, before anything imports mmcv.ops.
HIDE_EXT = textwrap.dedent("""
    import importlib.abc, sys
    class _NoExt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmcv._ext":
                raise ModuleNotFoundError("No module named 'mmcv._ext'", name=name)
            return None
    sys.meta_path.insert(0, _NoExt())
""")


def _py(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", HIDE_EXT + textwrap.dedent(code)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=300)


def test_without_compiled_ops_upernet_runs_on_the_stub():
    out = _py("""
        import os, torch
        from sf_mamba.openmmlab.compat import MmcvOpsUnavailable, ensure_mmcv_ops, has_compiled_ops
        assert not has_compiled_ops()
        os.environ["SF_MAMBA_NO_MMCV_STUB"] = "1"           # opt-out: a clear error instead
        try:
            ensure_mmcv_ops()
        except MmcvOpsUnavailable as err:
            assert "docs/install.md" in str(err) and "mmcv-lite" in str(err), err
        else:
            raise AssertionError("no error with SF_MAMBA_NO_MMCV_STUB=1")
        del os.environ["SF_MAMBA_NO_MMCV_STUB"]
        from mmengine.config import Config
        cfg = Config.fromfile("configs/seg/smoke.py")      # custom_imports -> backbone -> stub
        import importlib.util, mmcv._ext
        assert getattr(mmcv._ext, "__sf_mamba_stub__", False)
        importlib.util.find_spec("mmcv._ext")               # works (Runner's SyncBN check calls it)
        from mmengine.utils.dl_utils import mmcv_full_available
        assert not mmcv_full_available()
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
        register_all_modules()                              # imports mmseg.models -> mmcv.ops
        model = MODELS.build(cfg.model).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 64, 64), mode="tensor")
        assert out.shape == (1, 2, 16, 16), out.shape
        import mmcv.ops
        try:
            mmcv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
        except NotImplementedError as err:
            assert "mmcv-lite" in str(err)
        else:
            raise AssertionError("stubbed op ran")
        print("STUB-OK")
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "STUB-OK" in out.stdout
    assert "installing a stub mmcv._ext" in out.stderr  # loud, not silent


def test_full_mmcv_uses_compiled_ops():
    from sf_mamba.openmmlab.compat import ensure_mmcv_ops, has_compiled_ops

    if not has_compiled_ops():
        pytest.skip("this environment has mmcv-lite")
    assert ensure_mmcv_ops() == "compiled"
