# UperNet + SF-Mamba-S, scan='uni' on ADE20K, 512x512, 160k iterations (recipe: ./_base_/upernet_sf_mamba_ade20k_512x512_160k.py).
# scan='uni': no auxiliary patch swapping -- the MambaVision baseline, same recipe.
_base_ = ['./_base_/upernet_sf_mamba_ade20k_512x512_160k.py']

model = dict(
    backbone=dict(arch='sf_mamba_s', window_size=(8, 8, 160, 56), scan='uni'),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(optimizer=dict(lr=6e-5))
