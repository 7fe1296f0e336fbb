"""Fold-aware depthwise conv1d: taps are masked at image boundaries (forward and backward).

No Triton conv kernel is shipped (docs/kernels.md, "conv1d"): the model runs F.conv1d on the
unfolded (batch, D, L) tensor and the scan folds logically. These tests pin down the semantics
the masked (periodic) formulation must have and that running the conv unfolded is exactly it.
"""

import pytest
import torch
import torch.nn.functional as F

from sf_mamba_kernels.conv1d import fold_aware_conv1d_reference, periodic_conv1d
from sf_mamba_kernels.conv1d.reference import tap_offsets

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

CONFIGS = [(3, "same"), (4, "same"), (3, "causal"), (4, "causal")]


def fold_rows(x, k):
    """(B, D, L) -> (B/k, D, k*L): k consecutive images as one sequence (physical fold)."""
    batch, channels, length = x.shape
    return x.reshape(batch // k, k, channels, length).permute(0, 2, 1, 3).reshape(batch // k, channels, k * length)


def unfolded_conv(x, weight, bias, padding):
    """What the model does: a per-image conv on the unfolded tensor."""
    ksize = weight.shape[1]
    if padding == "same":
        return F.conv1d(x, weight[:, None], bias, padding="same", groups=x.shape[1])
    return F.conv1d(F.pad(x, (ksize - 1, 0)), weight[:, None], bias, groups=x.shape[1])


@pytest.mark.parametrize("ksize,padding", CONFIGS)
@pytest.mark.parametrize("segment", [1, 2, 7])
def test_periodic_mask_equals_per_image_conv_with_grads(ksize, padding, segment):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4 * segment, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, ksize, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(2, 3, 4 * segment, dtype=torch.float64)
    results = []
    for fn in (fold_aware_conv1d_reference, periodic_conv1d):
        out = fn(x, w, b, segment=segment, padding=padding)
        grads = torch.autograd.grad(out, (x, w, b), dout)
        results.append((out, *grads))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ksize,padding", CONFIGS)
def test_naive_folded_conv_leaks_only_at_boundaries(ksize, padding):
    torch.manual_seed(1)
    segment, k = 6, 3
    x = torch.randn(1, 2, k * segment)
    w = torch.randn(2, ksize)
    masked = periodic_conv1d(x, w, None, segment=segment, padding=padding)
    naive = unfolded_conv(x, w, None, padding)  # one conv over the folded sequence: taps cross images
    offsets = tap_offsets(ksize, padding)
    pos = torch.arange(k * segment) % segment
    t = torch.arange(k * segment)
    # a position differs iff one of its taps reads a neighbouring image's token
    crosses = torch.zeros(k * segment, dtype=torch.bool)
    for off in offsets:
        inside_seq = (t + off >= 0) & (t + off < k * segment)
        crosses |= inside_seq & ((pos + off < 0) | (pos + off >= segment))
    differs = (masked - naive).abs().amax(dim=(0, 1)) > 1e-6
    assert crosses.any()
    assert torch.equal(differs, crosses)


@pytest.mark.parametrize("ksize,padding", CONFIGS)
def test_unfolded_conv_then_fold_is_the_fold_aware_conv(ksize, padding):
    """Running the conv before folding (the model's order) gives the fold-aware conv exactly."""
    torch.manual_seed(2)
    batch, k, length = 6, 3, 5
    x = torch.randn(batch, 4, length)
    w, b = torch.randn(4, ksize), torch.randn(4)
    conv_then_fold = fold_rows(unfolded_conv(x, w, b, padding), k)
    fold_then_masked = fold_aware_conv1d_reference(fold_rows(x, k), w, b, segment=length, padding=padding)
    torch.testing.assert_close(conv_then_fold, fold_then_masked, rtol=0, atol=1e-6)


def test_conv_errors_name_the_argument():
    x = torch.randn(1, 2, 6)
    with pytest.raises(ValueError, match="segment=4 must be >= 1 and divide"):
        periodic_conv1d(x, torch.randn(2, 3), segment=4)
    with pytest.raises(ValueError, match="weight must be"):
        periodic_conv1d(x, torch.randn(3, 3), segment=3)
    with pytest.raises(ValueError, match="padding must be"):
        periodic_conv1d(x, torch.randn(2, 3), segment=3, padding="valid")
