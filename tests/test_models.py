"""The model family: timm registration, parameter counts, every switch, features, the paper's claim."""

import math

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import sf_mamba  # noqa: F401  (registers the models)
from sf_mamba.models import SCANS, VARIANTS
from sf_mamba.models.sf_mamba import HybridLevel, MambaMixer

MICRO = dict(num_classes=10)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def macs(model, x):
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("variant", ["t", "t2", "s", "b", "l"])
def test_uni_scan_has_mambavision_parameter_counts(variant):
    with torch.device("meta"):  # counting needs no memory or initialisation
        model = timm.create_model(f"sf_mamba_{variant}", scan="uni")
    published = VARIANTS[variant].published_params_m * 1e6
    assert abs(n_params(model) - published) / published < 0.005


def test_registered_in_timm_with_pretrained_cfg():
    names = timm.list_models("sf_mamba_*")
    assert {"sf_mamba_t", "sf_mamba_t2", "sf_mamba_s", "sf_mamba_b", "sf_mamba_l"} <= set(names)
    model = timm.create_model("sf_mamba_s")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == pytest.approx(0.93)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert timm.data.resolve_data_config({}, model=model)["crop_pct"] == pytest.approx(0.93)


def test_swap_is_the_default_and_adds_only_aux_tokens():
    with torch.device("meta"):
        swap = timm.create_model("sf_mamba_t")
        uni = timm.create_model("sf_mamba_t", scan="uni")
    assert swap.scan == "swap" and swap.aux_tokens == 2
    # two learnable tokens (prepended + appended) per hybrid level, of width 4C and 8C
    assert n_params(swap) - n_params(uni) == 2 * (320 + 640)
    assert [tuple(level.aux_embed.shape) for level in swap.levels[2:]] == [(2, 320), (2, 640)]
    with torch.device("meta"):
        one = timm.create_model("sf_mamba_t", aux_tokens=1)
    assert n_params(one) - n_params(uni) == 320 + 640


def test_two_aux_tokens_are_prepended_and_appended():
    level = timm.create_model("sf_mamba_micro", **MICRO).levels[2]
    seq = torch.zeros(1, 3, 64)
    with torch.no_grad():
        level.aux_embed.copy_(torch.stack([torch.full((64,), 1.0), torch.full((64,), 2.0)]))
    out = level._add_aux(seq)
    assert out[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 2.0]


def test_micro2_has_two_mamba_layers_per_hybrid_level_with_attention():
    model = timm.create_model("sf_mamba_micro2", **MICRO)
    for level in model.levels[2:]:
        assert "".join("M" if b.is_mamba else "A" for b in level.blocks) == "MMAA"
    off = timm.create_model("sf_mamba_micro2", attention=False, **MICRO)
    assert all(b.is_mamba for level in off.levels[2:] for b in level.blocks)


def test_adventurer_flips_patches_and_keeps_a_mean_heading_token():
    model = timm.create_model("sf_mamba_micro2", scan="adventurer", attention=False, **MICRO)
    level = model.levels[2]
    assert level.aux_tokens == 1 and level.aux_embed is None          # parameter-free, mean-initialised
    mixers = [b.mixer for b in level.blocks]
    assert [m.directions for m in mixers] == [("forward",), ("backward",)] * 2
    assert n_params(model) == n_params(timm.create_model("sf_mamba_micro2", scan="uni", attention=False,
                                                           **MICRO))
    seq = torch.randn(2, 4, 64)
    added = level._add_aux(seq)
    torch.testing.assert_close(added[:, 0], seq.mean(1))              # the heading average, at the head
    torch.testing.assert_close(added[:, 1:], seq)
    # the backward layer scans [head, p_N ... p_1]: the head token is still read first, so the
    # head's output depends on no patch (it is the first token of the scan in both directions)
    mixer = mixers[1]
    tokens = torch.randn(1, 5, 64, requires_grad=True)
    out = mixer(tokens, hw=(2, 2), aux_tokens=1, aux_at_head=True)
    # the head reads only itself and, through the k=3 conv, its raster neighbour
    (grad,) = torch.autograd.grad(out[0, 0].sum(), tokens, retain_graph=True)
    assert grad[0, 2:].abs().sum() == 0 and grad[0, 0].abs().sum() > 0
    # backward layer order [head, p4, p3, p2, p1]: the first raster patch is scanned last and sees
    # every token; the last raster patch, scanned right after the head, does not see p2
    (grad,) = torch.autograd.grad(out[0, 1].sum(), tokens, retain_graph=True)
    assert torch.all(grad[0].abs().sum(-1) > 0)
    (grad,) = torch.autograd.grad(out[0, 4].sum(), tokens)
    assert grad[0, 2].abs().sum() == 0 and grad[0, 0].abs().sum() > 0


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("attention", [True, False])
def test_forward_backward_every_scan(scan, attention):
    model = timm.create_model("sf_mamba_micro", scan=scan, attention=attention, **MICRO)
    x = torch.randn(2, 3, 64, 80)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs", [
    dict(aux_tokens=1), dict(aux_tokens=0), dict(aux_init="mean"), dict(aux_tokens=1, aux_init="mean"), dict(aux_discard="stage_end"),
    dict(swap_every=2), dict(scan="uni", aux_tokens=2), dict(fold=2), dict(fold="auto"),
    dict(backend="reference"), dict(mambavision_compat=True), dict(drop_path_rate=0.1, layer_scale=1e-5),
])
def test_forward_backward_every_switch(kwargs):
    model = timm.create_model("sf_mamba_micro", **MICRO, **kwargs)
    model.train()
    out = model(torch.randn(3, 3, 48, 48))
    out.sum().backward()
    assert out.shape == (3, 10)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("scan", ["bi_parallel", "cross4"])
def test_match_params_keeps_params_and_macs_equal(scan):
    x = torch.randn(1, 3, 64, 64)
    uni = timm.create_model("sf_mamba_micro", scan="uni", **MICRO)
    matched = timm.create_model("sf_mamba_micro", scan=scan, match_params=True, **MICRO)
    unmatched = timm.create_model("sf_mamba_micro", scan=scan, **MICRO)
    assert n_params(matched) == n_params(uni)
    assert macs(matched, x) == macs(uni, x)
    assert n_params(unmatched) > n_params(uni)


def test_bi_series_alternates_direction_between_layers():
    model = timm.create_model("sf_mamba_micro", scan="bi_series", attention=False, **MICRO)
    mixers = [m for m in model.levels[2].modules() if isinstance(m, MambaMixer)]
    assert [m.directions for m in mixers] == [("forward",), ("backward",)]
    assert n_params(model) == n_params(timm.create_model("sf_mamba_micro", scan="uni", attention=False,
                                                           **MICRO))


def test_attention_switch_controls_block_types():
    with torch.device("meta"):
        with_attn = timm.create_model("sf_mamba_t", scan="uni")
        s = timm.create_model("sf_mamba_s", scan="uni")
    kinds = ["M" if b.is_mamba else "A" for b in with_attn.levels[2].blocks]
    assert "".join(kinds) == "MMMMAAAA"  # MambaVision-T stage 3: first ceil(N/2) Mamba
    assert "".join("M" if b.is_mamba else "A" for b in s.levels[2].blocks) == "MMMMAAA"
    no_attn = timm.create_model("sf_mamba_micro", attention=False, **MICRO)
    assert all(b.is_mamba for level in no_attn.levels[2:] for b in level.blocks)


def _stage3_input_gradient(scan, query, **kwargs):
    """d(stage-3 output token `query`) / d(stage-3 input tokens), summed over channels: (14*14,)."""
    model = timm.create_model("sf_mamba_micro", scan=scan, attention=False, **MICRO, **kwargs)
    level = model.levels[2]
    assert isinstance(level, HybridLevel)
    window = level.window
    x = torch.randn(1, 64, window, window, requires_grad=True)
    out = level(x)
    out.flatten(2)[0, :, query].sum().backward()
    return x.grad.abs().sum(1).flatten()


@pytest.mark.parametrize("aux_tokens", [2, 1])
def test_central_claim_uni_cannot_see_the_future_swap_can(aux_tokens):
    query = 20
    n_mamba = 2  # micro's stage 3; each Mamba layer's k=3 'same' conv looks one token ahead
    reach = query + n_mamba
    grad_uni = _stage3_input_gradient("uni", query)
    grad_swap = _stage3_input_gradient("swap", query, aux_tokens=aux_tokens)
    assert grad_uni[:query + 1].sum() > 0
    assert torch.all(grad_uni[reach + 1:] == 0), "uni scan leaked information from the future"
    # The swapped tail token carries the whole window: every future token reaches the query.
    # (At initialisation the decay over ~180 steps makes the amount tiny; the claim is structural.)
    assert torch.all(grad_swap[reach + 1:] > 0)


def test_aux_swap_moves_tail_to_head():
    level = timm.create_model("sf_mamba_micro", aux_tokens=2, **MICRO).levels[2]
    seq = torch.arange(5.0).view(1, 5, 1)
    swapped, _ = level._swap(seq.clone(), token_at_head=False)
    assert swapped.flatten().tolist() == [4.0, 1.0, 2.0, 3.0, 0.0]
    level.aux_tokens = 1
    moved, at_head = level._swap(seq, token_at_head=False)
    assert moved.flatten().tolist() == [4.0, 0.0, 1.0, 2.0, 3.0] and at_head
    back, at_head = level._swap(moved, token_at_head=True)
    assert back.flatten().tolist() == seq.flatten().tolist() and not at_head


def test_aux_discard_point_changes_the_function():
    torch.manual_seed(0)
    a = timm.create_model("sf_mamba_micro", aux_discard="before_attention", **MICRO).eval()
    b = timm.create_model("sf_mamba_micro", aux_discard="stage_end", **MICRO).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(a(x), b(x))


def test_mamba_dt_init_survives_the_model_wide_init():
    model = timm.create_model("sf_mamba_micro", **MICRO)
    mixer = next(m for m in model.modules() if isinstance(m, MambaMixer))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.99 and dt.max() <= 0.1 * 1.01
    assert mixer.dt_proj.weight.abs().max() <= mixer.dt_rank ** -0.5
    assert torch.allclose(mixer.A_log[0].exp(), torch.arange(1.0, 9.0))


def test_mambavision_compat_adds_the_dt_bias_twice():
    torch.manual_seed(0)
    compat = timm.create_model("sf_mamba_micro", scan="uni", mambavision_compat=True, **MICRO).eval()
    plain = timm.create_model("sf_mamba_micro", scan="uni", **MICRO).eval()
    state = compat.state_dict()
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(compat(x), plain(x))
    doubled = {k: (2 * v if k.endswith("dt_proj.bias") else v) for k, v in state.items()}
    plain.load_state_dict(doubled)
    torch.testing.assert_close(compat(x), plain(x))


def test_mambavision_checkpoint_key_names():
    with torch.device("meta"):
        keys = timm.create_model("sf_mamba_b", scan="uni").state_dict().keys()
    for key in ["patch_embed.conv_down.0.weight", "patch_embed.conv_down.4.running_mean",
                "levels.0.blocks.0.conv1.weight", "levels.1.downsample.reduction.0.weight",
                "levels.2.blocks.0.mixer.in_proj.weight", "levels.2.blocks.0.mixer.conv1d_x.weight",
                "levels.2.blocks.0.mixer.dt_proj.bias", "levels.2.blocks.0.mixer.A_log",
                "levels.2.blocks.9.mixer.qkv.bias", "levels.3.blocks.4.gamma_2", "norm.weight", "head.bias"]:
        assert key in keys, key


@pytest.mark.parametrize("scan", ["swap", "uni", "bi_parallel"])
def test_model_fold_invariance(scan):
    model = timm.create_model("sf_mamba_micro", scan=scan, attention=False, **MICRO).eval()
    x = torch.randn(6, 3, 64, 64, requires_grad=True)
    ref = model(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    for fold in (2, 4):  # 4 does not divide the batch of 6
        model.set_fold(fold)
        out = model(x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)


def test_mixer_fold_invariance_and_leak_without_reset(monkeypatch):
    mixer = MambaMixer(32, fold=1)
    tokens = torch.randn(4, 18, 32, requires_grad=True)
    ref = mixer(tokens, hw=(4, 4))
    (g_ref,) = torch.autograd.grad(ref.sum(), tokens)
    mixer.fold = 2
    out = mixer(tokens, hw=(4, 4))
    (g,) = torch.autograd.grad(out.sum(), tokens)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    # the same fold with the reset switched off leaks the previous image's state
    import sf_mamba.models.sf_mamba as module

    real_scan = module.selective_scan_fn
    monkeypatch.setattr(module, "selective_scan_fn", lambda *a, **k: real_scan(*a, **{**k, "reset_every": None}))
    leaked = mixer(tokens, hw=(4, 4))
    fold_error = (out - ref).abs().max()
    assert (leaked - ref).abs().max() > 100 * fold_error.clamp_min(1e-9)


@pytest.mark.parametrize("size", [(224, 224), (250, 300)])
def test_features_only_shapes(size):
    model = timm.create_model("sf_mamba_t", features_only=True)
    h, w = size
    features = model(torch.randn(1, 3, h, w))
    assert model.feature_info.channels() == [80, 160, 320, 640]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    expected, hh, ww = [], h, w
    hh, ww = math.ceil(math.ceil(hh / 2) / 2), math.ceil(math.ceil(ww / 2) / 2)
    for channels in (80, 160, 320, 640):
        expected.append((1, channels, hh, ww))
        hh, ww = math.ceil(hh / 2), math.ceil(ww / 2)
    assert [tuple(f.shape) for f in features] == expected


def test_features_only_out_indices_and_intermediates():
    model = timm.create_model("sf_mamba_micro", features_only=True, out_indices=(1, 3))
    feats = model(torch.randn(2, 3, 96, 64))
    assert [f.shape[1] for f in feats] == [32, 128]
    full = timm.create_model("sf_mamba_micro", **MICRO).eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = full.forward_intermediates(x)
    assert [t.shape[1] for t in inter] == [16, 32, 64, 128]
    torch.testing.assert_close(full.forward_head(final), full(x))
    only = full.forward_intermediates(x, indices=[2], intermediates_only=True)
    torch.testing.assert_close(only[0], inter[2])


def test_forward_features_and_head_api():
    model = timm.create_model("sf_mamba_micro", **MICRO).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    assert timm.create_model("sf_mamba_micro", num_classes=0)(x).shape == (2, 128)


@pytest.mark.parametrize("kwargs,message", [
    (dict(bogus=1), "bogus"),
    (dict(scan="zigzag"), "scan must be one of"),
    (dict(aux_tokens=3), "aux_tokens must be 0, 1 or 2"),
    (dict(scan="cross4", aux_tokens=2), "aux_tokens=2 needs a forward scan"),
    (dict(scan="adventurer", aux_tokens=2), "'adventurer' takes 0 or 1"),
    (dict(aux_init="zeros"), "aux_init must be one of"),
    (dict(aux_discard="never"), "aux_discard must be one of"),
    (dict(fold=0), "fold must be a positive int or 'auto'"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(depths=(1, 1, 2)), "depths must be 4 positive ints"),
    (dict(swap_every=0), "swap_every must be a positive int"),
    (dict(pretrained=True), "no pretrained SF-Mamba weights"),
])
def test_bad_kwargs_raise_with_the_name(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        timm.create_model("sf_mamba_micro", **kwargs)


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_channel_last_depthwise_conv_matches_conv1d(kernel_size):
    from sf_mamba.models.sf_mamba import depthwise_conv1d_same

    x = torch.randn(2, 11, 6)
    weight = torch.randn(6, 1, kernel_size)
    expected = torch.nn.functional.conv1d(x.transpose(1, 2), weight, padding="same", groups=6)
    torch.testing.assert_close(depthwise_conv1d_same(x, weight), expected.transpose(1, 2))


def test_bad_inputs_raise_clear_errors():
    model = timm.create_model("sf_mamba_micro", **MICRO)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
