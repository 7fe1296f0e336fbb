# Mask R-CNN + SF-Mamba-S on COCO 2017, 1x, single-scale (recipe: ./_base_/mask-rcnn_sf_mamba_fpn_1x_coco.py).
_base_ = ['./_base_/mask-rcnn_sf_mamba_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_s', scan='swap'),
    neck=dict(in_channels=[96, 192, 384, 768]))
