"""SF-Mamba and MambaVision: one model module for the whole family.

Architecture (MambaVision's hybrid macro-architecture, clean-room from docs/model.md):

    stem (/4) -> level 0 [ConvBlock x N0] -> down -> level 1 [ConvBlock x N1] -> down
              -> level 2 [Mamba x ceil(N2/2), Attention x floor(N2/2)] (windows) -> down
              -> level 3 [same rule] -> BatchNorm2d -> global average pool -> Linear

SF-Mamba's two ideas are switches of this one model:

* **auxiliary patch swapping** (``scan='swap'``): two learnable (or mean-initialised) aux tokens
  join every window sequence before the first Mamba block of a hybrid level, one prepended and one
  appended (``aux_tokens=1``: a single token at the tail, an ablation). Between Mamba blocks the
  head and tail tokens trade places (no parameters): the tail token, which has seen the whole
  window in the forward scan, becomes the head of the next scan, so every patch of the next layer
  reads "future" information through the recurrence.
* **batch folding with periodic state reset** (``fold=k`` or ``'auto'``): the mixer scans k window
  sequences as one sequence with the state reset every L tokens. The depthwise convs run per window
  before folding, so nothing leaks across image boundaries and the result equals ``fold=1``.

``scan='uni'`` with no aux tokens *is* MambaVision (same parameter names, so its checkpoints load;
``mambavision_compat=True`` reproduces its double dt-bias). The other ablated designs are
``'bi_parallel'``, ``'bi_series'``, ``'cross4'`` and ``'adventurer'`` (bi_series' flip between
consecutive Mamba layers plus a mean-initialised "heading average" token kept at the head);
``match_params=True`` keeps the multi-direction parameters and MACs equal to the one-direction mixer
by splitting the SSM channels between directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, register_notrace_function, register_notrace_module, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from sf_mamba.model_names import SCANS
from sf_mamba_kernels.selective_scan import BACKENDS, check_fold, selective_scan_fn

__all__ = ["SFMamba", "VARIANTS", "VariantSpec", "SCANS", "AUX_INITS", "AUX_DISCARDS"]

AUX_INITS = ("learnable", "mean")
AUX_DISCARDS = ("before_attention", "stage_end")
DIRECTIONS_PER_MIXER = {"swap": 1, "uni": 1, "bi_series": 1, "bi_parallel": 2, "cross4": 4, "adventurer": 1}
# aux tokens each scan design supports and gets by default (docs/model.md argues the defaults)
AUX_TOKENS_ALLOWED = {"swap": (0, 1, 2), "uni": (0, 1, 2), "adventurer": (0, 1)}
AUX_TOKENS_DEFAULT = {"swap": 2, "adventurer": 1}


# --------------------------------------------------------------------------------------------
# Mixer
# --------------------------------------------------------------------------------------------


def scan_order(direction: str, height: int, width: int, device) -> Optional[torch.Tensor]:
    """Token permutation for one scan direction over a raster-ordered (height x width) window.

    Returns None for the identity (forward raster scan) so the common path does no gather.
    """
    if direction == "forward":
        return None
    raster = torch.arange(height * width, device=device)
    if direction == "backward":
        return raster.flip(0)
    column_major = raster.view(height, width).t().reshape(-1)
    if direction == "column_forward":
        return column_major
    if direction == "column_backward":
        return column_major.flip(0)
    raise ValueError(f"unknown scan direction {direction!r}")


class SSMParameters(nn.Module):
    """Per-direction SSM parameters (x_proj, dt_proj, A_log, D) for ``channels`` scanned channels."""

    def __init__(self, channels: int, d_state: int, dt_rank: int):
        super().__init__()
        self.x_proj = nn.Linear(channels, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, channels, bias=True)
        self.A_log = nn.Parameter(torch.empty(channels, d_state))
        self.D = nn.Parameter(torch.empty(channels))


def init_ssm_parameters(x_proj, dt_proj, A_log, D, dt_rank, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
    """Mamba's initialisation, kept (MambaVision's model-wide init overwrote the dt part)."""
    with torch.no_grad():
        bound = dt_rank ** -0.5
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A_log.copy_(torch.log(torch.arange(1, A_log.shape[1] + 1, dtype=torch.float32)).expand_as(A_log))
        D.fill_(1.0)
        trunc_normal_(x_proj.weight, std=0.02)


def mixer_directions(scan: str, layer_index: int) -> tuple[str, ...]:
    """Directions scanned in parallel (each with its own SSM parameters) by Mamba layer i."""
    if scan == "bi_parallel":
        return ("forward", "backward")
    if scan == "cross4":
        return ("forward", "backward", "column_forward", "column_backward")
    if scan in ("bi_series", "adventurer"):  # one direction per layer, flipped between consecutive layers
        return ("forward",) if layer_index % 2 == 0 else ("backward",)
    return ("forward",)


def depthwise_conv1d_same(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv1d(x.transpose(1, 2), weight, padding='same', groups=C)`` on a channel-last (Bt, L, C)
    tensor, as K shifted multiply-adds: for MambaVision's k=3 this is ~30x faster on CPU than
    oneDNN's grouped conv and needs no layout change. weight: (C, 1, K)."""
    k = weight.shape[-1]
    left = (k - 1) // 2
    padded = F.pad(x, (0, 0, left, k - 1 - left))
    length = x.shape[1]
    taps = weight[:, 0].t().to(x.dtype)  # (K, C)
    out = padded[:, :length] * taps[0]
    for i in range(1, k):
        out = torch.addcmul(out, padded[:, i:i + length], taps[i])
    return out


@register_notrace_module  # FX: one leaf (fold, backend and the op's checks are Python on shapes)
class MambaMixer(nn.Module):
    """MambaVision's mixer: in_proj -> {SSM half: conv, SiLU, selective scan | z half: conv, SiLU}
    -> concat -> out_proj. Input/output (batch, tokens, dim); ``hw`` is the window's (h, w) and is
    only needed by ``cross4``; aux tokens (if any) sit at both ends of the sequence.
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, directions: Sequence[str] = ("forward",),
                 match_params: bool = False, fold: Union[int, str] = 1, backend: str = "auto",
                 mambavision_compat: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even (the mixer splits it into two halves), got {dim}")
        self.dim, self.d_state = dim, d_state
        self.dt_rank = math.ceil(dim / 16)
        half = dim // 2
        self.directions = tuple(directions)
        self.match_params = match_params and len(self.directions) > 1
        if self.match_params and half % len(self.directions):
            raise ValueError(f"match_params needs the SSM width {half} to split evenly over "
                             f"{len(self.directions)} directions")
        self.ssm_width = half // len(self.directions) if self.match_params else half
        self.fold, self.backend, self.mambavision_compat = fold, backend, mambavision_compat

        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=False)
        # Direction 0 keeps MambaVision's parameter names so its checkpoints load unchanged.
        self.x_proj = nn.Linear(self.ssm_width, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.ssm_width, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.ssm_width, d_state))
        self.D = nn.Parameter(torch.empty(self.ssm_width))
        self.extra_directions = nn.ModuleList(
            SSMParameters(self.ssm_width, d_state, self.dt_rank) for _ in self.directions[1:])
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self):
        for params in self._direction_parameters():
            init_ssm_parameters(*params, dt_rank=self.dt_rank)

    def _direction_parameters(self):
        yield self.x_proj, self.dt_proj, self.A_log, self.D
        for extra in self.extra_directions:
            yield extra.x_proj, extra.dt_proj, extra.A_log, extra.D

    def _scan(self, x, params, order):
        """One direction: x (Bt, L, S) channel-last, already conv'd; returns (Bt, S, L) in raster order."""
        x_proj, dt_proj, A_log, D = params
        if order is not None:
            x = x.index_select(1, order)
        x_dbl = x_proj(x)  # (Bt, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # MambaVision applied dt_proj *with* its bias and passed the bias to the scan again.
        dt = dt_proj(dt) if self.mambavision_compat else F.linear(dt, dt_proj.weight)
        # Channel-last tensors passed as (Bt, S, L) views. The op interface resolves fold='auto' and
        # clamps k; with a reset every window any k gives the fold=1 result (at k=1 the reset at t=0
        # is a no-op). Whether a backend copies the strided views is the backend's business.
        y = selective_scan_fn(
            x.transpose(1, 2), dt.transpose(1, 2), -torch.exp(A_log.float()), B.transpose(1, 2),
            C.transpose(1, 2), D.float(), delta_bias=dt_proj.bias.float(), delta_softplus=True,
            reset_every=int(x.shape[1]), fold=self.fold, backend=self.backend)  # int: jit.trace gives a tensor
        if order is not None:
            y = torch.empty_like(y).index_copy_(-1, order, y)
        return y

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int], aux_tokens: int = 0,
                aux_at_head: bool = False) -> torch.Tensor:
        x, z = self.in_proj(tokens).chunk(2, dim=-1)  # channel-last (Bt, L, D/2) each
        # The convs run per window sequence (unfolded), so folding never mixes images.
        x = F.silu(depthwise_conv1d_same(x, self.conv1d_x.weight))
        z = F.silu(depthwise_conv1d_same(z, self.conv1d_z.weight))
        outputs = []
        for index, params in enumerate(self._direction_parameters()):
            order = scan_order(self.directions[index], *hw, x.device)
            if order is not None and aux_tokens:
                if not (aux_tokens == 1 and aux_at_head):
                    raise ValueError("aux tokens are only supported with forward scans "
                                     "(or one token kept at the head, scan='adventurer')")
                # the head token stays first; only the patches change order (Adventurer's flip)
                order = torch.cat([order.new_zeros(1), order + 1])
            if self.match_params:
                part = x[..., index * self.ssm_width:(index + 1) * self.ssm_width]
                outputs.append(self._scan(part, params, order))
            else:
                outputs.append(self._scan(x, params, order))
        y = torch.cat(outputs, dim=1) if self.match_params else sum(outputs[1:], outputs[0])
        return self.out_proj(torch.cat([y.transpose(1, 2).to(z.dtype), z], dim=-1))


class Attention(nn.Module):
    """Multi-head self-attention without positional bias (MambaVision's)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, **_unused) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


# --------------------------------------------------------------------------------------------
# Blocks and levels
# --------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        return x + self.drop_path(self.norm2(self.conv2(self.act(self.norm1(self.conv1(x))))))


class HybridBlock(nn.Module):
    """Pre-norm block: x += DropPath(g1 * mixer(LN(x))); x += DropPath(g2 * MLP(LN(x)))."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float,
                 layer_scale: Optional[float]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = 1.0

    @property
    def is_mamba(self) -> bool:
        return isinstance(self.mixer, MambaMixer)

    def forward(self, x, **mixer_kwargs):
        x = x + self.drop_path(self.gamma_1 * self.mixer(self.norm1(x), **mixer_kwargs))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class Downsample(nn.Module):
    """3x3 stride-2 conv doubling the channels (MambaVision's, no norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x):
        return self.reduction(x)


class Stem(nn.Module):
    def __init__(self, in_chans: int, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Identity()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(in_dim, eps=1e-4), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU())

    def forward(self, x):
        return self.conv_down(x)


@register_notrace_function  # FX: the padding is Python arithmetic on the map size
def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """NCHW -> (B * n_windows, window*window, C) raster-ordered sequences, zero-padding right/bottom."""
    batch, channels, height, width = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    x = x.view(batch, channels, hp // window, window, wp // window, window)
    x = x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, channels)
    return x, (height, width, hp, wp)


@register_notrace_function
def window_reverse(x: torch.Tensor, window: int, batch: int, sizes) -> torch.Tensor:
    height, width, hp, wp = sizes
    channels = x.shape[-1]
    x = x.view(batch, hp // window, wp // window, window, window, channels)
    x = x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, hp, wp)
    return x[:, :, :height, :width].contiguous()


class ConvLevel(nn.Module):
    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(dim, drop_path[i]) for i in range(depth))
        self.downsample = Downsample(dim) if downsample else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@register_notrace_function  # FX cannot trace item assignment
def swap_head_and_tail_(seq: torch.Tensor) -> torch.Tensor:
    """Swap the first and last tokens of (B, L, C) ``seq`` in place (the block's residual add does
    not need its output) and return it."""
    head = seq[:, 0].clone()
    seq[:, 0] = seq[:, -1]
    seq[:, -1] = head
    return seq


class HybridLevel(nn.Module):
    """Window-partitioned level: first ceil(depth/2) Mamba blocks, then attention (if enabled).

    Aux tokens join every window sequence before the first Mamba block, trade head/tail places
    after every ``swap_every`` Mamba blocks (scan='swap') and leave at ``aux_discard``. With
    scan='adventurer' one token sits at the head throughout while the patch order flips.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_path: Sequence[float], layer_scale: Optional[float], downsample: bool,
                 scan: str, attention: bool, aux_tokens: int, aux_init: str, aux_discard: str,
                 swap_every: int, match_params: bool, fold, backend: str, mambavision_compat: bool,
                 d_state: int):
        super().__init__()
        self.window, self.scan = window, scan
        self.aux_tokens, self.aux_init, self.aux_discard, self.swap_every = aux_tokens, aux_init, aux_discard, swap_every
        n_mamba = depth if not attention else (depth + 1) // 2
        blocks = []
        for i in range(depth):
            if i < n_mamba:
                mixer = MambaMixer(dim, d_state=d_state, directions=mixer_directions(scan, i),
                                   match_params=match_params, fold=fold, backend=backend,
                                   mambavision_compat=mambavision_compat)
            else:
                mixer = Attention(dim, num_heads)
            blocks.append(HybridBlock(dim, mixer, mlp_ratio, drop_path[i], layer_scale))
        self.blocks = nn.ModuleList(blocks)
        self.n_mamba = n_mamba
        self.aux_embed = (nn.Parameter(torch.zeros(aux_tokens, dim))
                          if aux_tokens and aux_init == "learnable" else None)
        self.downsample = Downsample(dim) if downsample else None

    def _add_aux(self, seq: torch.Tensor) -> torch.Tensor:
        if self.aux_embed is not None:
            aux = self.aux_embed.to(seq.dtype).unsqueeze(0).expand(seq.shape[0], -1, -1)
        else:  # Adventurer-style "heading average": the window's mean token
            aux = seq.mean(dim=1, keepdim=True).expand(-1, self.aux_tokens, -1)
        if self.aux_tokens == 1 and self.scan == "adventurer":  # Adventurer's heading token
            return torch.cat([aux, seq], dim=1)
        if self.aux_tokens == 1:  # a single token starts at the tail, where it aggregates
            return torch.cat([seq, aux], dim=1)
        return torch.cat([aux[:, :1], seq, aux[:, 1:]], dim=1)

    def _swap(self, seq: torch.Tensor, token_at_head: bool) -> tuple[torch.Tensor, bool]:
        """Parameter-free swap: the tail (which saw the whole window) moves to the head."""
        if self.aux_tokens == 2:
            return swap_head_and_tail_(seq), token_at_head
        if token_at_head:  # one token: it alternates tail (aggregate) <-> head (broadcast)
            return torch.cat([seq[:, 1:], seq[:, :1]], dim=1), False
        return torch.cat([seq[:, -1:], seq[:, :-1]], dim=1), True

    def _drop_aux(self, seq: torch.Tensor, token_at_head: bool) -> torch.Tensor:
        if self.aux_tokens == 2:
            return seq[:, 1:-1]
        return seq[:, 1:] if token_at_head else seq[:, :-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        seq, sizes = window_partition(x, self.window)
        hw = (self.window, self.window)
        has_aux, token_at_head = False, self.scan == "adventurer"
        if self.aux_tokens:
            seq, has_aux = self._add_aux(seq), True
        for index, block in enumerate(self.blocks):
            if block.is_mamba:
                seq = block(seq, hw=hw, aux_tokens=self.aux_tokens if has_aux else 0,
                            aux_at_head=token_at_head)
                if has_aux and self.scan == "swap" and (index + 1) % self.swap_every == 0:
                    seq, token_at_head = self._swap(seq, token_at_head)
            else:
                if has_aux and self.aux_discard == "before_attention":
                    seq, has_aux = self._drop_aux(seq, token_at_head), False
                seq = block(seq)
        if has_aux:
            seq = self._drop_aux(seq, token_at_head)
        return window_reverse(seq, self.window, batch, sizes)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@register_notrace_function  # FX (timm's feature extraction) keeps it as one call in the graph
def check_image_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``x`` itself if it is a floating (N, in_chans, H, W) tensor; otherwise a clear error."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"input must be an (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] != in_chans:
        raise ValueError(f"input has {x.shape[1]} channels, the model expects in_chans={in_chans}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating tensor, got {x.dtype}")
    return x


class SFMamba(nn.Module):
    """SF-Mamba / MambaVision backbone + classifier. See the module docstring for the switches.

    ``forward_features`` returns the normalised last stage map (B, 8C, H/32, W/32);
    ``forward_head`` pools and classifies; ``forward_intermediates`` returns the four
    pre-downsample stage maps (strides 4, 8, 16, 32; channels C, 2C, 4C, 8C).
    """

    def __init__(
        self,
        dim: int = 80,
        in_dim: int = 32,
        depths: Sequence[int] = (1, 3, 8, 4),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        window_size: Sequence[int] = (8, 8, 14, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        layer_scale: Optional[float] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        scan: str = "swap",
        attention: bool = True,
        aux_tokens: Optional[int] = None,
        aux_init: Optional[str] = None,
        aux_discard: str = "before_attention",
        swap_every: int = 1,
        match_params: bool = False,
        fold: Union[int, str] = 1,
        backend: str = "auto",
        mambavision_compat: bool = False,
        d_state: int = 8,
    ):
        super().__init__()
        depths, num_heads, window_size = tuple(depths), tuple(num_heads), tuple(window_size)
        for name, value in (("depths", depths), ("num_heads", num_heads), ("window_size", window_size)):
            if len(value) != 4 or any(not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"{name} must be 4 positive ints, got {value!r}")
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        if aux_tokens is None:  # two tokens, prepended and appended, as the method describes
            aux_tokens = AUX_TOKENS_DEFAULT.get(scan, 0)
        if aux_tokens not in (0, 1, 2):
            raise ValueError(f"aux_tokens must be 0, 1 or 2, got {aux_tokens!r}")
        if aux_tokens not in AUX_TOKENS_ALLOWED.get(scan, (0,)):
            raise ValueError(f"aux_tokens={aux_tokens} needs a forward scan ('swap' or 'uni'; "
                             f"'adventurer' takes 0 or 1), got scan={scan!r}")
        if aux_init is None:  # Adventurer's heading token is the window average
            aux_init = "mean" if scan == "adventurer" else "learnable"
        if aux_init not in AUX_INITS:
            raise ValueError(f"aux_init must be one of {AUX_INITS}, got {aux_init!r}")
        if aux_discard not in AUX_DISCARDS:
            raise ValueError(f"aux_discard must be one of {AUX_DISCARDS}, got {aux_discard!r}")
        if not isinstance(swap_every, int) or swap_every < 1:
            raise ValueError(f"swap_every must be a positive int, got {swap_every!r}")
        check_fold(fold)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if dim < 1 or in_dim < 1 or in_chans < 1 or num_classes < 0:
            raise ValueError(f"dim, in_dim, in_chans must be positive and num_classes >= 0, got "
                             f"dim={dim}, in_dim={in_dim}, in_chans={in_chans}, num_classes={num_classes}")

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.scan, self.aux_tokens = scan, aux_tokens
        self.patch_embed = Stem(in_chans, in_dim, dim)
        n_blocks = sum(depths)  # stochastic depth rises linearly over all blocks, conv ones included
        rates = [drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        levels, self.feature_info = [], []
        for i, depth in enumerate(depths):
            level_dim = dim * 2 ** i
            level_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            if i < 2:
                level = ConvLevel(level_dim, depth, level_rates, downsample=i < 3)
            else:
                level = HybridLevel(
                    level_dim, depth, num_heads[i], window_size[i], mlp_ratio, level_rates, layer_scale,
                    downsample=i < 3, scan=scan, attention=attention, aux_tokens=aux_tokens,
                    aux_init=aux_init, aux_discard=aux_discard, swap_every=swap_every,
                    match_params=match_params, fold=fold, backend=backend,
                    mambavision_compat=mambavision_compat, d_state=d_state)
            levels.append(level)
            self.feature_info.append(dict(num_chs=level_dim, reduction=4 * 2 ** i, module=f"feature_taps.{i}"))
        self.levels = nn.ModuleList(levels)
        # The named point where each level's map leaves it, before the downsample that the model
        # applies. timm's FX feature extraction returns the last graph node under a feature_info
        # module name, and under "levels.i" that node is the downsample. (No state: checkpoints keep
        # MambaVision's key names.)
        self.feature_taps = nn.ModuleList(nn.Identity() for _ in levels)
        self.num_features = self.head_hidden_size = dim * 8
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        # The model-wide init above touched the mixers' Linear layers: restore Mamba's SSM init.
        for module in self.modules():
            if isinstance(module, MambaMixer):
                module.reset_ssm_parameters()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, HybridLevel) and module.aux_embed is not None:
            trunc_normal_(module.aux_embed, std=0.02)

    @property
    def stages(self) -> nn.ModuleList:
        """timm-style alias of ``levels`` (MambaVision's name, kept for checkpoint keys)."""
        return self.levels

    # ---- switches that can change after construction ----
    def set_fold(self, fold: Union[int, str]) -> None:
        check_fold(fold)
        for module in self.modules():
            if isinstance(module, MambaMixer):
                module.fold = fold

    def set_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for module in self.modules():
            if isinstance(module, MambaMixer):
                module.backend = backend

    # ---- timm API ----
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^patch_embed", blocks=r"^levels\.(\d+)" if coarse else
                    [(r"^levels\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise NotImplementedError("gradient checkpointing is not implemented for SF-Mamba")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _run_level(self, index: int, x):
        level = self.levels[index]
        feature = self.feature_taps[index](level(x))
        return feature, (level.downsample(feature) if level.downsample is not None else feature)

    def forward_intermediates(self, x, indices: Optional[Union[int, list]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        x = check_image_input(x, self.patch_embed.conv_down[0].in_channels)
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        intermediates = []
        x = self.patch_embed(x)
        last = len(self.levels) - 1
        levels = range(max_index + 1) if (stop_early or intermediates_only) else range(len(self.levels))
        for i in levels:
            feature, x = self._run_level(i, x)
            if i in take_indices:
                intermediates.append(self.norm(feature) if norm and i == last else feature)
        if intermediates_only:
            return intermediates
        if max_index == last or not stop_early:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, list] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.levels), indices)
        self.levels = self.levels[:max_index + 1]
        self.feature_taps = self.feature_taps[:max_index + 1]
        if self.levels[-1].downsample is not None:
            self.levels[-1].downsample = None
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x):
        x = check_image_input(x, self.patch_embed.conv_down[0].in_channels)
        x = self.patch_embed(x)
        for i in range(len(self.levels)):
            _, x = self._run_level(i, x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Variants and timm registration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSpec:
    """One row of the variant table (MambaVision's hyper-parameters; see docs/model.md)."""

    dim: int
    in_dim: int
    depths: tuple
    num_heads: tuple
    window_size: tuple
    drop_path_rate: float
    layer_scale: Optional[float]
    crop_pct: float
    published_params_m: Optional[float]  # MambaVision's published count (scan='uni')


VARIANTS: dict[str, VariantSpec] = {
    "t": VariantSpec(80, 32, (1, 3, 8, 4), (2, 4, 8, 16), (8, 8, 14, 7), 0.2, None, 1.0, 31.8),
    "t2": VariantSpec(80, 32, (1, 3, 11, 4), (2, 4, 8, 16), (8, 8, 14, 7), 0.2, None, 0.98, 35.1),
    "s": VariantSpec(96, 64, (3, 3, 7, 5), (2, 4, 8, 16), (8, 8, 14, 7), 0.2, None, 0.93, 50.1),
    "b": VariantSpec(128, 64, (3, 3, 10, 5), (2, 4, 8, 16), (8, 8, 14, 7), 0.3, 1e-5, 1.0, 97.7),
    "l": VariantSpec(196, 64, (3, 3, 10, 5), (4, 8, 16, 32), (8, 8, 14, 7), 0.3, 1e-5, 1.0, 227.9),
    # Not a paper variant: a CPU smoke model, 0.71M parameters with 1000 classes (0.58M with 10).
    "micro": VariantSpec(16, 8, (1, 1, 2, 2), (1, 1, 2, 4), (8, 8, 14, 7), 0.0, None, 1.0, None),
    # Not a paper variant: micro with 4 blocks per hybrid level, so that with attention on each level
    # still has 2 Mamba layers (swaps and flips between Mamba layers then happen); the RQ3 CPU study.
    "micro2": VariantSpec(16, 8, (1, 1, 4, 4), (1, 1, 2, 4), (8, 8, 14, 7), 0.0, None, 1.0, None),
}


def _pretrained_cfg(spec: VariantSpec) -> dict:
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=spec.crop_pct,
        crop_mode="center", interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.conv_down.0", classifier="head", fixed_input_size=False,
        license="apache-2.0")


def _create(variant: str, pretrained: bool = False, **kwargs) -> SFMamba:
    spec = VARIANTS[variant]
    if pretrained:
        raise ValueError("no pretrained SF-Mamba weights exist yet; load a checkpoint from "
                         "`sf_mamba train` with timm's load_checkpoint instead of pretrained=True")
    defaults = dict(dim=spec.dim, in_dim=spec.in_dim, depths=spec.depths, num_heads=spec.num_heads,
                    window_size=spec.window_size, drop_path_rate=spec.drop_path_rate,
                    layer_scale=spec.layer_scale)
    return build_model_with_cfg(
        SFMamba, f"sf_mamba_{variant}", pretrained=False, pretrained_cfg=kwargs.pop("pretrained_cfg", None),
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        **{**defaults, **kwargs})


# timm's register_model reads this module's ``default_cfgs`` to attach each pretrained_cfg, so the
# table comes before the factories.
default_cfgs = generate_default_cfgs({f"sf_mamba_{v}": _pretrained_cfg(spec) for v, spec in VARIANTS.items()})


# One thin factory per row of VARIANTS (the hyper-parameters live only there). With scan='uni' and
# no aux tokens each is the MambaVision model of the same letter.

@register_model
def sf_mamba_t(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-T: MambaVision-T's hyper-parameters (31.8M parameters with scan='uni')."""
    return _create("t", pretrained, **kwargs)


@register_model
def sf_mamba_t2(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-T2: MambaVision-T2's hyper-parameters (35.1M parameters with scan='uni')."""
    return _create("t2", pretrained, **kwargs)


@register_model
def sf_mamba_s(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-S: MambaVision-S's hyper-parameters (50.1M parameters with scan='uni')."""
    return _create("s", pretrained, **kwargs)


@register_model
def sf_mamba_b(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-B: MambaVision-B's hyper-parameters (97.7M parameters with scan='uni')."""
    return _create("b", pretrained, **kwargs)


@register_model
def sf_mamba_l(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-L: MambaVision-L's hyper-parameters (227.9M parameters with scan='uni')."""
    return _create("l", pretrained, **kwargs)


@register_model
def sf_mamba_micro(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-micro: not a paper variant; a tiny model for CPU smoke runs and tests."""
    return _create("micro", pretrained, **kwargs)


@register_model
def sf_mamba_micro2(pretrained: bool = False, **kwargs) -> SFMamba:
    """SF-Mamba-micro2: micro with 4 blocks per hybrid level (2 Mamba layers with attention on);
    not a paper variant: the model of RQ3's CPU future-context study."""
    return _create("micro2", pretrained, **kwargs)
