"""Semantic segmentation on mmsegmentation (UperNet + SF-Mamba backbones).

Import-light on purpose: nothing here imports mmseg/mmengine at package import time, so
``sf_mamba`` keeps working without the ``seg`` extra. The pieces:

- :mod:`sf_mamba.seg.backbone`  -- ``SFMambaBackbone``, registered in mmseg's ``MODELS`` when imported
  (configs load it with ``custom_imports=dict(imports=['sf_mamba.seg.backbone'])``);
- :mod:`sf_mamba.seg.safe_load` -- a ``weights_only`` allow-list for mmengine checkpoints (torch >= 2.6);
- :mod:`sf_mamba.seg.compat`    -- mmcv-lite detection / ``mmcv._ext`` stub;
- :mod:`sf_mamba.seg.data`      -- ``sf_mamba seg-data``: the offline horse-on-texture set;
- :mod:`sf_mamba.seg.train` / :mod:`sf_mamba.seg.test` -- ``sf_mamba seg-train`` / ``seg-test``.
"""
