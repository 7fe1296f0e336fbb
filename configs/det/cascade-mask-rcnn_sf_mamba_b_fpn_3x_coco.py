# Cascade Mask R-CNN + SF-Mamba-B on COCO 2017, 3x, multi-scale (recipe: ./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py).
_base_ = ['./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_b', scan='swap'),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=2e-4))  # MambaVision: 2e-4 for B, 1e-4 for T/S
