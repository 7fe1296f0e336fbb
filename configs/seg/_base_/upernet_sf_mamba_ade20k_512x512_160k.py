# UperNet + SF-Mamba on ADE20K, 512x512 crops, 160k iterations: MambaVision's downstream recipe
# (docs/segmentation.md, "Recipe"). The variant files set arch, widths, windows, lr and scan.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['sf_mamba.openmmlab.backbone'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        # _delete_: drop every Swin key of upernet_swin.py -- SFMambaBackbone passes all keys to the
        # model and rejects unknown ones, so nothing here is silently ignored.
        _delete_=True,
        type='SFMambaBackbone',
        arch='sf_mamba_t',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        # MambaVision's configs say 0.3 (T) / 0.7 (S) / 0.4 (B), but their wrapper never passed the
        # value on: every published run used the class default 0.2. We use the value that ran.
        drop_path_rate=0.2,
        # Stages 3-4 as one (zero-padded) global window at every ADE20K test size.
        window_size=(8, 8, 64, 32),
        scan='swap',
        # ImageNet checkpoint from `sf_mamba train`:  --cfg-options model.backbone.pretrained=PATH
        pretrained=None),
    decode_head=dict(in_channels=[80, 160, 320, 640], channels=512, pool_scales=(1, 2, 3, 6),
                     num_classes=150),
    auxiliary_head=dict(in_channels=320, in_index=2, num_classes=150,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))

# AdamW, weight decay 0.01, no decay on any parameter whose name contains 'norm'; fp16 AMP.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# Linear warm-up over 1500 iterations, then poly (power 1) decay to 0 at 160k.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# Total batch 16 = 8 GPUs x 2 images (MambaVision: 16x1 for T/B, 8x2 for S). With another GPU
# count set train_dataloader.batch_size so that GPUs x batch_size = 16.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
# Checkpoint every 4k iterations (preemption-safe auto-resume), keep the last 3.
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000,
                                     max_keep_ckpts=3, save_last=True))

# sf_mamba seg-train extras: FLOPs at 512x2048, the convention of MambaVision's / Swin's tables.
sf_mamba = dict(flops_input_shape=(3, 512, 2048))
