"""What segmentation (mmseg) and detection (mmdet) share: one home, so neither task copies the other.

Import-light: nothing here imports mmengine/mmseg/mmdet at package import time.

- :mod:`sf_mamba.openmmlab.backbone`  -- ``SFMambaBackbone``, registered in mmseg's AND mmdet's ``MODELS``
  on import (configs: ``custom_imports=dict(imports=['sf_mamba.openmmlab.backbone'])``);
- :mod:`sf_mamba.openmmlab.safe_load` -- a ``weights_only`` allow-list for mmengine checkpoints (torch >= 2.6);
- :mod:`sf_mamba.openmmlab.compat`    -- mmcv-lite stub for imports, and the compiled-ops check detection needs;
- :mod:`sf_mamba.openmmlab.runner`    -- the ``*-train`` / ``*-test`` flow on mmengine's Runner (auto-resume,
  safe loading, metrics.json/meta.json), parameterised by a :class:`~sf_mamba.openmmlab.runner.Task`.
"""
