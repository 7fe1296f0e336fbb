# Cascade Mask R-CNN + SF-Mamba on COCO 2017, 3x schedule (36 epochs), multi-scale training:
# MambaVision's detection recipe (docs/detection.md, "Recipe"), i.e. mmdet's ConvNeXt
# "4conv1fc-giou amp-ms-crop-3x" recipe without layer-wise lr decay. The variant files set arch,
# widths, lr and scan.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['sf_mamba.openmmlab.backbone'], allow_failed_imports=False)

num_classes = 80
model = dict(
    backbone=dict(
        # _delete_: drop every ResNet key -- SFMambaBackbone passes all keys to the model and
        # rejects unknown ones, so nothing here is silently ignored.
        _delete_=True,
        type='SFMambaBackbone',
        arch='sf_mamba_t',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        # MambaVision's det configs say 0.2 (T) / 0.3 (S) / 0.5 (B), but their wrapper never passed the
        # value on: every published run used the class default 0.2. We use the value that ran.
        drop_path_rate=0.2,
        # Stages 3-4 as one (zero-padded) global window at COCO sizes (~1333x800: 84x50 and 42x25 maps).
        window_size=(8, 8, 112, 56),
        scan='swap',
        # ImageNet checkpoint from `sf_mamba train`:  --cfg-options model.backbone.pretrained=PATH
        pretrained=None),
    neck=dict(in_channels=[80, 160, 320, 640]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=num_classes,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))

# Multi-scale training, DETR-style: flip, then either a random short side in 480..800 (step 32, long
# side <= 1333), or a resize to 400/500/600, a random 384..600 crop and a random 480..800 resize.
ms_scales = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
# Total batch 16 = 8 GPUs x 2 images. With another GPU count set train_dataloader.batch_size so that
# GPUs x batch_size = 16 (or enable auto_scale_lr, base_batch_size 16).
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
# Linear warm-up over 1000 iterations (factor 0.001), then x0.1 at epochs 27 and 33.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
# AdamW, weight decay 0.05, no decay on any parameter whose name contains 'norm'; fp16 AMP.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# A checkpoint every epoch (preemption-safe auto-resume), keep the last 3.
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_last=True))

# sf_mamba det-train extras: FLOPs at 1280x800, the convention of Swin's / ConvNeXt's COCO tables.
sf_mamba = dict(flops_input_shape=(3, 800, 1280))
