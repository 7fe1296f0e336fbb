# Mask R-CNN + SF-Mamba-S, scan='uni' on COCO 2017, 1x, single-scale (recipe: ./_base_/mask-rcnn_sf_mamba_fpn_1x_coco.py).
# scan='uni': no auxiliary patch swapping -- the MambaVision baseline, same recipe.
_base_ = ['./_base_/mask-rcnn_sf_mamba_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_s', scan='uni'),
    neck=dict(in_channels=[96, 192, 384, 768]))
