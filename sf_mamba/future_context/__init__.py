"""A real-data dense task that needs *future* context in raster order — RQ3's trained evidence.

Why it exists: SF-Mamba claims that auxiliary patch swapping lets a one-direction (raster) scan carry
information from later tokens to earlier ones. Classification by global pooling barely needs that
(the pooled vector sees every token anyway); a dense task where a pixel's label depends on content
*below* it does.

The task (``data.py``): scikit-learn's digits (1797 real 8x8 scans, offline) upsampled to a
128x128 image; every ink pixel of the 8x8 grid carries the digit's class (1..10), background is 0.
A pixel in the top rows of a "7" or a "9" must know the lower part of the digit to be labelled.

The model (``model.py``): an SF-Mamba backbone (``sf_mamba_micro2``: 4 blocks per hybrid level, so
>= 2 Mamba layers even with attention on) with a light pointwise dense head on the stage-3 (stride
16 = one token per digit cell) and stage-4 maps. The head mixes no positions, so every bit of
cross-position context comes from the backbone.

Metrics (``metrics.py``): mIoU, pixel accuracy and ink-pixel (foreground) accuracy, overall and per
raster-order region: ``top`` (first half of the rows, which needs the future) and ``bottom``.

``train.py`` (``sf_mamba fc-train``) trains one configuration for one seed, then runs the
information-flow probe (``sf_mamba.analysis.probe``) on the final checkpoint and on the same
weights at initialisation. ``stats.py`` holds the paired bootstrap and the verdict logic;
``report.py`` renders RQ3's future-context table, figure and verdict lines from ``runs.csv``.
"""
