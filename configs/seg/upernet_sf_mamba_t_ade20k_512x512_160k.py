# UperNet + SF-Mamba-T on ADE20K, 512x512, 160k iterations (recipe: ./_base_/upernet_sf_mamba_ade20k_512x512_160k.py).
_base_ = ['./_base_/upernet_sf_mamba_ade20k_512x512_160k.py']

model = dict(
    backbone=dict(arch='sf_mamba_t', window_size=(8, 8, 64, 32), scan='swap'),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
optim_wrapper = dict(optimizer=dict(lr=5e-5))
