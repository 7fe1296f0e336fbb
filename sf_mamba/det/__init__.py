"""Object detection / instance segmentation on mmdetection (Cascade Mask R-CNN, Mask R-CNN + SF-Mamba).

Import-light: nothing here imports mmdet/mmengine at package import time. The pieces:

- :mod:`sf_mamba.det.data`  -- ``sf_mamba det-data``: the offline coins instance set (COCO format);
- :mod:`sf_mamba.det.train` / :mod:`sf_mamba.det.test` -- ``sf_mamba det-train`` / ``det-test``.

The backbone adapter (the same class registered in mmseg and mmdet), safe checkpoint loading, the
compiled-ops check and the Runner flow are shared with segmentation: :mod:`sf_mamba.openmmlab`.
"""
