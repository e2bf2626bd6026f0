"""timm backbone factory: any timm model name, headless, with an optional CIFAR stem.

Only timm's public API is used (``create_model``, ``num_features``, ``forward_features``,
``forward_head(pre_logits=True)``), so any timm architecture works and timm upgrades do not break us.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn


def create_backbone(name: str, *, cifar_stem: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)``, optionally CIFAR-stemmed.

    ``cifar_stem=True`` replaces a ResNet stem with one 3x3 stride-1 conv and removes the max-pool
    (the CIFAR recipes of MoCo, Un-Mix and EMP-SSL), keeping 32 px inputs at 32x32 into stage 1.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone must be a timm model name, got {name!r}")
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"backbone {name!r} is not a timm model name (see timm.list_models())")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "num_classes")}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if cifar_stem:
        apply_cifar_stem(model)
    return model


def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """Swap a timm ResNet-family stem for ``Conv3x3(stride 1) -> BN -> act`` without max-pool (in place)."""
    if not (hasattr(model, "conv1") and hasattr(model, "bn1") and hasattr(model, "maxpool")):
        raise ValueError(
            f"cifar_stem=True needs a ResNet-family backbone with conv1/bn1/maxpool; "
            f"{type(model).__name__} has none (set cifar_stem=False)"
        )
    in_chans = getattr(model, "in_chans", None) or _first_conv_in_channels(model.conv1)
    width = model.bn1.num_features
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _first_conv_in_channels(module: nn.Module) -> int:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("could not find the stem convolution of the backbone")


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits features ``[B, num_features]`` for images ``x: [B, C, H, W]``."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)

