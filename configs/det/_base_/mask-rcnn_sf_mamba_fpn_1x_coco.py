# Mask R-CNN + SF-Mamba on COCO 2017, 1x schedule (12 epochs), single-scale 1333x800: the cheaper
# option. MambaVision publishes no Mask R-CNN number; the recipe is Swin's Mask R-CNN 1x (AdamW 1e-4,
# wd 0.05, warm-up 1000 iterations, x0.1 at epochs 8 and 11), with AMP.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['sf_mamba.openmmlab.backbone'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,  # every ResNet key goes; SFMambaBackbone passes all its keys to the model
        type='SFMambaBackbone',
        arch='sf_mamba_t',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        window_size=(8, 8, 112, 56),
        scan='swap',
        pretrained=None),
    neck=dict(in_channels=[80, 160, 320, 640]))

train_dataloader = dict(batch_size=2)  # 8 GPUs x 2 = 16
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_last=True))

sf_mamba = dict(flops_input_shape=(3, 800, 1280))
