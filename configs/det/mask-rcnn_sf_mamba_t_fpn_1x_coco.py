# Mask R-CNN + SF-Mamba-T on COCO 2017, 1x, single-scale (recipe: ./_base_/mask-rcnn_sf_mamba_fpn_1x_coco.py).
_base_ = ['./_base_/mask-rcnn_sf_mamba_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_t', scan='swap'),
    neck=dict(in_channels=[80, 160, 320, 640]))
