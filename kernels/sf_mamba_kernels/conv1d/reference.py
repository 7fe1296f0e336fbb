"""Depthwise conv1d on folded sequences, masked at image boundaries (pure PyTorch).

A folded sequence concatenates images of ``segment`` tokens each. MambaVision's conv is non-causal
('same', k=3: taps at offsets -1, 0, +1); a plain conv over the folded sequence would mix the last
token of one image with the first token of the next. Tap w reads offset o_w and is kept only when
``0 <= (t mod segment) + o_w < segment``.

Two implementations with identical results:
- :func:`fold_aware_conv1d_reference` unfolds to (Bt*k, D, segment) and runs ``F.conv1d`` per image
  (the definition);
- :func:`periodic_conv1d` works on the folded tensor directly with per-tap masks (what a fused kernel
  does), used to test the masking logic itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tap_offsets(kernel_size: int, padding: str) -> list[int]:
    if padding == "same":  # PyTorch 'same': left pad (k-1)//2, right pad the rest
        left = (kernel_size - 1) // 2
        return [w - left for w in range(kernel_size)]
    if padding == "causal":
        return [w - (kernel_size - 1) for w in range(kernel_size)]
    raise ValueError(f"padding must be 'same' or 'causal', got {padding!r}")


def _check(x, weight, segment):
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, length), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must be (channels={x.shape[1]}, kernel_size), got {tuple(weight.shape)}")
    if segment is not None and (segment < 1 or x.shape[-1] % segment):
        raise ValueError(f"segment={segment} must be >= 1 and divide the sequence length {x.shape[-1]}")


def fold_aware_conv1d_reference(x, weight, bias=None, segment=None, padding="same"):
    """x: (Bt, D, k*segment); weight: (D, K). Returns the per-image conv, folded back."""
    _check(x, weight, segment)
    batch, channels, length = x.shape
    segment = segment or length
    k = length // segment
    per_image = x.reshape(batch, channels, k, segment).permute(0, 2, 1, 3).reshape(batch * k, channels, segment)
    ksize = weight.shape[1]
    if padding == "same":
        out = F.conv1d(per_image, weight[:, None], bias, padding="same", groups=channels)
    elif padding == "causal":
        out = F.conv1d(F.pad(per_image, (ksize - 1, 0)), weight[:, None], bias, groups=channels)
    else:
        raise ValueError(f"padding must be 'same' or 'causal', got {padding!r}")
    return out.reshape(batch, k, channels, segment).permute(0, 2, 1, 3).reshape(batch, channels, length)


def periodic_conv1d(x, weight, bias=None, segment=None, padding="same"):
    """Same result as the reference, computed on the folded tensor with boundary masks."""
    _check(x, weight, segment)
    length = x.shape[-1]
    segment = segment or length
    pos = torch.arange(length, device=x.device) % segment
    out = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))
    for w, off in enumerate(tap_offsets(weight.shape[1], padding)):
        shifted = torch.roll(x, shifts=-off, dims=-1)  # shifted[t] = x[t + off]
        keep = ((pos + off) >= 0) & ((pos + off) < segment)
        out = out + weight[:, w, None] * shifted * keep
    if bias is not None:
        out = out + bias[:, None]
    return out
