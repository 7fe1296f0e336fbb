"""Semantic segmentation on mmsegmentation (UperNet + SF-Mamba backbones).

Import-light on purpose: nothing here imports mmseg/mmengine at package import time, so
``sf_mamba`` keeps working without the ``seg`` extra. The pieces:

- :mod:`sf_mamba.seg.data`      -- ``sf_mamba seg-data``: the offline horse-on-texture set;
- :mod:`sf_mamba.seg.train` / :mod:`sf_mamba.seg.test` -- ``sf_mamba seg-train`` / ``seg-test``.

The backbone adapter, the safe checkpoint loading, the mmcv-ops checks and the Runner flow are
shared with detection and live in :mod:`sf_mamba.openmmlab`.
"""
