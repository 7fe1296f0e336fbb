# CPU smoke: Mask R-CNN + SF-Mamba micro (dims 16/32/64/128) on the offline coins set (COCO format).
#
#   sf_mamba det-data  --out data/det_smoke
#   sf_mamba det-train --config configs/det/smoke.py --work-dir runs/det_smoke --data-root data/det_smoke
#
# The paper's detector family scaled down to run in about a minute on 2 CPU cores: a tiny backbone,
# FPN/RPN/RoI heads with 32-64 channels, BN, fp32 (no AMP), 1 class, 96x96 images, iteration-based.
# Needs mmcv's compiled ops (NMS, RoIAlign): det-train refuses under mmcv-lite.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']

custom_imports = dict(imports=['sf_mamba.openmmlab.backbone'], allow_failed_imports=False)

data_root = 'data/det_smoke'
image_size = 96
num_classes = 1
model = dict(
    backbone=dict(
        _delete_=True,  # drop every ResNet key: SFMambaBackbone passes all keys to the model
        type='SFMambaBackbone',
        arch='sf_mamba_micro',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        window_size=(8, 8, 6, 3),  # = the 96x96 input's stage-3/4 maps: one window each, no padding
        out_norm='ln2d'),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=2, in_channels=32, conv_out_channels=32, num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=400, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=400, max_per_img=200),
        rcnn=dict(max_per_img=30)))

# ---------------------------------------------------------------- data (sf_mamba det-data layout)
dataset_type = 'CocoDataset'
metainfo = dict(classes=('coin', ), palette=[(220, 20, 60)])
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),  # identity; sets scale_factor
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
# COCO box and mask AP by pycocotools (det-train --data-root moves ann_file along with data_root).
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + '/annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule (recipe shape, tiny)
max_iters = 150
optim_wrapper = dict(
    type='OptimWrapper',  # AMP off on CPU
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[120], gamma=0.1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=75, max_keep_ckpts=2))
log_processor = dict(type='LogProcessor', window_size=25, by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)

# sf_mamba det-train extras (ignored by mmengine's Runner): input shape for the FLOP count
sf_mamba = dict(flops_input_shape=(3, image_size, image_size))
