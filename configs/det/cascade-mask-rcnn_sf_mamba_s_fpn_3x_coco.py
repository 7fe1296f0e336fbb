# Cascade Mask R-CNN + SF-Mamba-S on COCO 2017, 3x, multi-scale (recipe: ./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py).
_base_ = ['./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_s', scan='swap'),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
