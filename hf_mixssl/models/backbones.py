"""timm backbone factory: any timm model name, headless, with an optional CIFAR stem.

Only timm's public API is used (``create_model``, ``num_features``, ``forward_features``,
``forward_head(pre_logits=True)``), so any timm architecture works and timm upgrades do not break us.
"""

from __future__ import annotations

import math
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


def sincos_2d_position_embedding(grid_size: tuple[int, int], dim: int, *, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``[1, 1 + h * w, dim]`` with a zero [cls] slot, as moco-v3 ``vits.py``
    ``build_2d_sincos_position_embedding``: a quarter of the channels each for ``sin``/``cos`` of the first and the
    second grid coordinate, frequencies ``1 / temperature^(k / (dim / 4))``.

    The grids come from ``torch.meshgrid(arange(w), arange(h))`` with its "ij" indexing, as there: token
    ``i * h + j`` gets ``(i, j)``, so on the row-major token order the "w" quarter encodes the row.
    """
    h, w = grid_size
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs an embedding dim divisible by 4, got {dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = grid_w.flatten()[:, None] * omega[None, :]
    out_h = grid_h.flatten()[:, None] * omega[None, :]
    pos = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)
    return torch.cat([torch.zeros(1, dim), pos], dim=0)[None]


@torch.no_grad()
def moco_v3_vit_init(vit: nn.Module) -> nn.Module:
    """Re-initialise a timm ``VisionTransformer`` as moco-v3 ``vits.py`` ``VisionTransformerMoCo`` does (in place):

    - a frozen 2-D sin-cos position embedding (:func:`sincos_2d_position_embedding`);
    - every Linear xavier-uniform with zero bias, the ``qkv`` Linear with the bound of one of its three parts
      (``sqrt(6 / (out / 3 + in))``);
    - ``cls_token ~ N(0, 1e-6)``;
    - the patch projection xavier-uniform over ``3 * p * p + dim`` with zero bias.

    Modules are visited in ``named_modules`` order, so from the same RNG state the weights equal the official ones.
    """
    if not (hasattr(vit, "patch_embed") and hasattr(vit, "pos_embed") and getattr(vit, "cls_token", None) is not None):
        raise ValueError(f"the moco-v3 ViT init needs a timm VisionTransformer with a [cls] token; got "
                         f"{type(vit).__name__}")
    if getattr(vit, "num_prefix_tokens", 1) != 1:
        raise ValueError("the moco-v3 ViT init assumes one and only one prefix token, [cls]")
    pos = sincos_2d_position_embedding(tuple(vit.patch_embed.grid_size), vit.embed_dim)
    vit.pos_embed.data.copy_(pos)
    vit.pos_embed.requires_grad_(False)
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear):
            if "qkv" in name:
                val = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -val, val)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(vit.cls_token, std=1e-6)
    proj = vit.patch_embed.proj
    val = math.sqrt(6.0 / float(3 * math.prod(vit.patch_embed.patch_size) + vit.embed_dim))
    nn.init.uniform_(proj.weight, -val, val)
    nn.init.zeros_(proj.bias)
    return vit
