"""Folding costs the mixer's depthwise conv nothing: it runs per window, before the scan folds.

The fold-aware conv of the research notes (taps masked where they would read a neighbouring image
of a folded sequence) is written here as the spec, and the model's conv
(``depthwise_conv1d_same``: shifted multiply-adds over the unfolded (batch, L, C) tensor) is held
against it: conv-then-fold equals fold-then-masked-conv exactly, and a naive conv over the folded
sequence differs at exactly the positions whose taps cross an image. No separate conv kernel is
shipped: the scan folds logically, so the conv never sees a folded tensor.
"""

import pytest
import torch
import torch.nn.functional as F

from sf_mamba.models.sf_mamba import depthwise_conv1d_same


def fold_rows(x, k):
    """(batch, L, C) channel-last -> (batch/k, k*L, C): k consecutive windows as one sequence."""
    batch, length, channels = x.shape
    return x.reshape(batch // k, k * length, channels)


def masked_conv_over_folded(x_folded, weight, segment):
    """'same' depthwise conv over a folded (rows, k*T, C) sequence whose taps read zero outside
    their own segment of T tokens: output t = sum_i w_i x[t + i - left] if 0 <= (t mod T) + i - left < T."""
    ksize = weight.shape[-1]
    left = (ksize - 1) // 2
    total = x_folded.shape[1]
    pos = torch.arange(total)
    out = torch.zeros_like(x_folded)
    for i in range(ksize):
        offset = i - left
        source = pos + offset
        inside = (source >= 0) & (source < total) & ((pos % segment) + offset >= 0) & ((pos % segment) + offset < segment)
        gathered = x_folded[:, source.clamp(0, total - 1)] * inside[None, :, None]
        out = out + gathered * weight[:, 0, i]
    return out


@pytest.mark.parametrize("ksize", [3, 4])
@pytest.mark.parametrize("length", [1, 5, 7])
def test_conv_per_window_then_fold_is_the_fold_aware_conv(ksize, length):
    torch.manual_seed(0)
    batch, k, channels = 6, 3, 4
    x = torch.randn(batch, length, channels, dtype=torch.float64)
    weight = torch.randn(channels, 1, ksize, dtype=torch.float64)
    conv_then_fold = fold_rows(depthwise_conv1d_same(x, weight), k)
    fold_then_masked = masked_conv_over_folded(fold_rows(x, k), weight, length)
    torch.testing.assert_close(conv_then_fold, fold_then_masked, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("ksize", [3, 4])
def test_naive_conv_over_the_folded_sequence_leaks_exactly_at_boundaries(ksize):
    """The spec has teeth: a conv that ignores the boundaries differs where a tap crosses an image."""
    torch.manual_seed(1)
    length, k, channels = 6, 3, 2
    x = torch.randn(1, k * length, channels, dtype=torch.float64)
    weight = torch.randn(channels, 1, ksize, dtype=torch.float64)
    masked = masked_conv_over_folded(x, weight, length)
    naive = F.conv1d(x.transpose(1, 2), weight, padding="same", groups=channels).transpose(1, 2)
    torch.testing.assert_close(depthwise_conv1d_same(x, weight), naive)  # the model's conv is this conv
    left = (ksize - 1) // 2
    pos = torch.arange(k * length)
    crosses = torch.zeros(k * length, dtype=torch.bool)
    for i in range(ksize):
        source = pos + i - left
        crosses |= (source >= 0) & (source < k * length) & (source // length != pos // length)
    differs = (masked - naive).abs().amax(dim=(0, 2)) > 1e-9
    assert crosses.any()
    assert torch.equal(differs, crosses)
