# Cascade Mask R-CNN + SF-Mamba-B, scan='uni' on COCO 2017, 3x, multi-scale (recipe: ./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py).
# scan='uni': no auxiliary patch swapping -- the MambaVision baseline, same recipe.
_base_ = ['./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_b', scan='uni'),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=2e-4))  # MambaVision: 2e-4 for B, 1e-4 for T/S
