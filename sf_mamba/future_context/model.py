"""Backbone + light dense head for the future-context task.

The head is pointwise: 1x1 projections of the stage-3 (stride 16) and stage-4 (stride 32, upsampled
x2) maps, summed, BatchNorm, GELU, 1x1 classifier. It mixes no positions (bar the x2 bilinear
upsampling of stage 4), so all cross-position context comes from the backbone — which is what the
task measures. UperNet's pyramid pooling would give every pixel global context and hide the scan's
contribution, the way attention does; it is also ~50x the head cost on a 2-core CPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseHeadSegmenter(nn.Module):
    def __init__(self, model_name: str, num_classes: int, model_kwargs: dict | None = None, hidden: int = 64,
                 out_size: tuple[int, int] | None = None):
        super().__init__()
        self.out_size = tuple(out_size) if out_size else None
        import timm

        import sf_mamba  # noqa: F401  registers the sf_mamba_* models

        if not timm.is_model(model_name):
            raise ValueError(f"unknown model {model_name!r}; sf_mamba models: {timm.list_models('sf_mamba*')}")
        self.backbone = timm.create_model(model_name, num_classes=0, **(model_kwargs or {}))
        chs = [info["num_chs"] for info in self.backbone.feature_info]
        self.proj3 = nn.Conv2d(chs[2], hidden, 1)
        self.proj4 = nn.Conv2d(chs[3], hidden, 1)
        self.norm = nn.BatchNorm2d(hidden)
        self.classifier = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, classes, S/16, S/16) logits (bilinearly resized to ``out_size`` if set and
        different: below 128 px a stage-3 token covers more than one digit cell)."""
        f3, f4 = self.backbone.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
        y = self.proj3(f3) + F.interpolate(self.proj4(f4), size=f3.shape[-2:], mode="bilinear",
                                           align_corners=False)
        logits = self.classifier(F.gelu(self.norm(y)))
        if self.out_size and tuple(logits.shape[-2:]) != self.out_size:
            logits = F.interpolate(logits, size=self.out_size, mode="bilinear", align_corners=False)
        return logits
