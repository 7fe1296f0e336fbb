# Cascade Mask R-CNN + SF-Mamba-S, scan='uni' on COCO 2017, 3x, multi-scale (recipe: ./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py).
# scan='uni': no auxiliary patch swapping -- the MambaVision baseline, same recipe.
_base_ = ['./_base_/cascade-mask-rcnn_sf_mamba_fpn_3x_coco.py']

model = dict(
    backbone=dict(arch='sf_mamba_s', scan='uni'),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
