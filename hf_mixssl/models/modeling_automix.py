"""AutoMix (Liu et al., ECCV 2022): a learned MixBlock trained through a momentum pipeline.

Per training step (two ``lam ~ Beta(alpha, alpha)`` and two partner permutations, one each for the MixBlock
and for the backbone):

1. the momentum encoder ``k`` runs a full forward on the clean images (no gradient; in training mode, so its
   BatchNorm statistics of every stage see clean images, as ``self.backbone_k(img)`` in OpenMixup's
   ``classifiers/automix.py``) and the MixBlock reads its stage feature;
2. the MixBlock turns it into a mask ``m`` (the partner's share); ``x_mix = (1 - m) * x + m * x[perm]``;
3. ``loss_mixblock = CE_mix(head_mix_k(k(x_mix_mb)))`` reaches only the MixBlock (``k`` is frozen), plus the
   mask loss ``w * max(|1 - mean(m) - lam| - margin, 0)``;
4. the online encoder ``q`` learns from ``CE(head_one_q(q(x)))`` and ``CE_mix(head_mix_q(q(x_mix_bb)))`` with the
   backbone's mask detached (plain Mixup when ``lam`` is within ``lam_margin`` of 0 or 1);
5. after the optimizer step the loop calls :meth:`update_momentum`: ``k`` (backbone and heads) <- EMA of ``q``,
   with OpenMixup's ``CosineScheduleHook`` schedule.

Inference uses ``k``. Only sibling role modules are imported, so this file travels with the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbones import create_backbone, pooled_features
from .configuration_automix import AutoMixConfig
from .losses import mixed_cross_entropy
from .mixing import sample_lam
from .momentum import cosine_anneal, make_momentum_copy, momentum_schedule, update_momentum
from .visualization import denormalize, image_grid
from .pretrained import VisionPreTrainedModel, record_auto_classes, single_view


@dataclass
class AutoMixOutput(ModelOutput):
    """AutoMix output: ``loss`` and every term (training), ``logits`` of the momentum classifier.

    Args:
        loss: ``loss_one + loss_mix + loss_mixblock + loss_mask``.
        logits: ``[B, num_labels]`` from ``head_one_k(k(x))`` (the inference path).
        loss_one: CE of the online classifier on clean images.
        loss_mix: mixed CE of the online mix head on the backbone's mixed images.
        loss_mixblock: mixed CE through the frozen momentum encoder (trains the MixBlock only).
        loss_mask: weighted mask-ratio loss of the MixBlock.
        mask_mean: mean partner share of the MixBlock's mask.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_one: torch.Tensor | None = None
    loss_mix: torch.Tensor | None = None
    loss_mixblock: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    mask_mean: torch.Tensor | None = None


class MixBlock(nn.Module):
    """AutoMix's cross-attention mask generator (OpenMixup ``PixelMixBlock``).

    For features ``f: [B, C, h, w]`` (optionally with a constant ``lam`` channel), a shared 1x1 conv
    ``C -> C/2`` gives queries from ``f`` and keys from the partner ``f[perm]``; a 1x1 conv ``C -> 1`` gives the
    partner's values. ``P = softmax(q kᵀ / sqrt(C/2))`` (fp32), ``logit = P v``, nearest-upsampled to the image
    size, ``m = sigmoid(logit)``: the partner's share of each pixel.
    """

    def __init__(self, in_channels: int, *, lam_concat: bool = False, init_std: float = 0.01) -> None:
        super().__init__()
        self.lam_concat = lam_concat
        channels = in_channels + int(lam_concat)
        self.inter_channels = max(1, channels // 2)
        self.qk = nn.Conv2d(channels, self.inter_channels, 1, bias=True)
        self.value = nn.Conv2d(channels, 1, 1, bias=True)
        for conv in (self.qk, self.value):
            nn.init.normal_(conv.weight, std=init_std)
            nn.init.zeros_(conv.bias)

    def forward(self, feat: torch.Tensor, *, lam: float, perm: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``feat: [B, C, h, w]`` -> mask ``m: [B, 1, H, W]`` in (0, 1) for images of ``size = (H, W)``."""
        with torch.autocast(feat.device.type, enabled=False):  # attention logits in fp32
            f = feat.float()
            f_a, f_b = f, f[perm]
            if self.lam_concat:
                ones = torch.ones_like(f[:, :1])
                f_a = torch.cat([f_a, lam * ones], dim=1)
                f_b = torch.cat([f_b, (1.0 - lam) * ones], dim=1)
            b, _, h, w = f.shape
            q = self.qk(f_a).flatten(2)  # [B, C/2, N]
            k = self.qk(f_b).flatten(2)  # [B, C/2, N]
            v = self.value(f_b).flatten(2)  # [B, 1, N]
            attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(self.inter_channels), dim=-1)  # [B, N, N]
            logit = (attn @ v.transpose(1, 2)).transpose(1, 2).reshape(b, 1, h, w)
            logit = F.interpolate(logit, size=size, mode="nearest")
            return torch.sigmoid(logit)


def mask_ratio_loss(mask: torch.Tensor, lam: float, *, margin: float) -> torch.Tensor:
    """``max(|1 - mean(mask) - lam| - margin, 0)``: keeps the x-share of the mask near ``lam``."""
    return (torch.abs(1.0 - mask.mean() - lam) - margin).clamp_min(0.0)


class AutoMixPreTrainedModel(VisionPreTrainedModel):
    config_class = AutoMixConfig
    config: AutoMixConfig
    base_model_prefix = "automix"


class AutoMixModel(AutoMixPreTrainedModel):
    """Online encoder ``q`` (backbone, one-hot head, mix head), its momentum copy ``k`` and the MixBlock."""

    # The MixBlock and the online encoder learn from different losses; keep DDP tolerant of that.
    ddp_find_unused_parameters = True

    def __init__(self, config: AutoMixConfig) -> None:
        super().__init__(config)
        record_auto_classes(config, type(self), ("AutoModel", "AutoModelForImageClassification"))
        self.backbone = create_backbone(config.backbone, cifar_stem=config.cifar_stem, **config.backbone_kwargs)
        info = self.backbone.feature_info
        if not config.mixblock_stage < len(info):
            raise ValueError(f"mixblock_stage {config.mixblock_stage} is out of range: {config.backbone} has "
                             f"{len(info)} feature stages")
        dim = self.backbone.num_features
        self.head_one = nn.Linear(dim, config.num_labels)
        self.head_mix = nn.Linear(dim, config.num_labels)
        self.mixblock = MixBlock(info[config.mixblock_stage]["num_chs"], lam_concat=config.lam_concat,
                                 init_std=config.mixblock_init_std)
        self.backbone_k = make_momentum_copy(self.backbone)
        self.head_one_k = make_momentum_copy(self.head_one)
        self.head_mix_k = make_momentum_copy(self.head_mix)
        # Training progress, saved with the model so that a resumed run continues the mask-loss schedule.
        self.register_buffer("progress", torch.zeros(()))
        self.post_init()

    # ------------------------------------------------------------------------------------- momentum
    @torch.no_grad()
    def update_momentum(self, progress: float) -> float:
        """EMA of q into k at ``progress = step / total`` in [0, 1], as OpenMixup's ``CosineScheduleHook`` with
        ``adjust_scope=[momentum_start, 1]`` and ``warming_up="constant"``: ``m = momentum`` before
        ``momentum_start``, then ``final - (final - base) * (1 + cos(pi * progress)) / 2`` (the cosine of the whole
        run, so ``m`` jumps to its value at ``momentum_start`` there rather than starting the cosine afresh).

        Differs by one step: the hook evaluates the step count before the step (``runner.iter``), the loop passes it
        after, which moves ``m`` by at most ``pi * (final - base) / (2 * total)``.
        """
        cfg = self.config
        self.progress.fill_(progress)
        m = cfg.momentum if progress < cfg.momentum_start else momentum_schedule(
            progress, base=cfg.momentum, final=cfg.momentum_final, kind="cosine")
        for online, ema in ((self.backbone, self.backbone_k), (self.head_one, self.head_one_k),
                            (self.head_mix, self.head_mix_k)):
            update_momentum(ema, online, m=m)
        return m

    def optimizer_param_groups(self) -> list[dict]:
        """Online encoder and MixBlock as separate groups; the MixBlock's carries ``lr_scale``
        (``mixblock_lr_scale``), and where set its own SGD ``momentum`` and the ``min_lr`` of its own cosine."""
        cfg = self.config
        mixblock = list(self.mixblock.parameters())
        ids = {id(p) for p in mixblock}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        group = {"params": mixblock, "lr_scale": cfg.mixblock_lr_scale}
        if cfg.mixblock_momentum is not None:
            group["momentum"] = cfg.mixblock_momentum
        if cfg.mixblock_min_lr is not None:
            group["min_lr"] = cfg.mixblock_min_lr
        return [{"params": rest}, group]

    # ------------------------------------------------------------------------------------- inference
    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled momentum-encoder features ``[B, D]`` (inference uses ``k``)."""
        return pooled_features(self.backbone_k, pixel_values)

    def online_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits of the online encoder and its clean head, ``[B, num_labels]`` (inference uses the momentum one)."""
        return self.head_one(pooled_features(self.backbone, pixel_values))

    def extra_classifiers(self) -> dict:
        """The online encoder beside the momentum one: it leads early in training."""
        return {"top1_online": self.online_logits}

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Online backbone from ``state``; the momentum backbone starts as its copy (as at construction)."""
        self.backbone.load_state_dict(state, strict=True)
        self.backbone_k.load_state_dict(self.backbone.state_dict())

    def get_encoder(self) -> nn.Module:
        """The momentum encoder's timm backbone (AutoMix's inference network)."""
        return self.backbone_k

    def masks(self, pixel_values: torch.Tensor, *, lam: float, perm: torch.Tensor) -> torch.Tensor:
        """The MixBlock's partner-share masks ``[B, 1, H, W]`` for clean images (pictures, analysis)."""
        with torch.no_grad():
            feat = self.backbone_k.forward_intermediates(
                pixel_values, indices=[self.config.mixblock_stage], intermediates_only=True, stop_early=True)[0]
        return self.mixblock(feat, lam=lam, perm=perm, size=tuple(pixel_values.shape[-2:]))

    @torch.no_grad()
    def pictures(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images, partners, the MixBlock's partner-share masks (white = partner) and the mixed images."""
        pixel_values = single_view(pixel_values)
        x = pixel_values
        perm = torch.randperm(x.shape[0]).to(x.device)
        mask = self.masks(x, lam=0.5, perm=perm)
        mixed = (1.0 - mask) * x + mask * x[perm]
        mean, std = self.config.image_mean, self.config.image_std
        return {"automix_masks": image_grid([denormalize(x, mean, std), denormalize(x[perm], mean, std), mask,
                                             denormalize(mixed, mean, std)])}

    # ------------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        lam: tuple[float, float] | None = None,
        perm: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> AutoMixOutput:
        """``pixel_values: [B, C, H, W]`` (or ``[B, 1, C, H, W]``). Training with labels runs the AutoMix step;
        otherwise the momentum classifier's logits (and CE when labels are given).

        ``lam = (lam_mixblock, lam_backbone)`` and ``perm`` (same order) fix the random draws.
        """
        pixel_values = single_view(pixel_values)
        x = pixel_values
        logits_k = self.head_one_k(pooled_features(self.backbone_k, x)) if not self.training else None
        if not (self.training and labels is not None):
            loss = F.cross_entropy(logits_k.float(), labels) if labels is not None else None
            return AutoMixOutput(loss=loss, logits=logits_k)

        cfg, b = self.config, x.shape[0]
        lam_mb, lam_bb = lam if lam is not None else (sample_lam(cfg.mix_alpha), sample_lam(cfg.mix_alpha))
        perm_mb, perm_bb = perm if perm is not None else (torch.randperm(b).to(x.device), torch.randperm(b).to(x.device))
        size = tuple(x.shape[-2:])
        with torch.no_grad():  # the full clean pass: k's BN running statistics see clean images in every stage
            _, (feat,) = self.backbone_k.forward_intermediates(x, indices=[cfg.mixblock_stage])

        # MixBlock step: gradients reach the mask through the frozen momentum encoder.
        m_mb = self.mixblock(feat, lam=lam_mb, perm=perm_mb, size=size)
        x_mb = (1.0 - m_mb) * x + m_mb * x[perm_mb]
        logits_mb = self.head_mix_k(pooled_features(self.backbone_k, x_mb))
        loss_mixblock = mixed_cross_entropy(logits_mb, labels, labels[perm_mb], lam=lam_mb)
        weight = cfg.mask_loss_weight
        if cfg.mask_loss_schedule == "cosine":
            weight *= cosine_anneal(float(self.progress), start=1.0, end=0.0)
        loss_mask = weight * mask_ratio_loss(m_mb, lam_mb, margin=cfg.mask_loss_margin)

        # Backbone step on a detached mask (plain Mixup near the ends of lam, where masks are unreliable).
        if cfg.lam_margin <= lam_bb <= 1.0 - cfg.lam_margin:
            with torch.no_grad():
                m_bb = self.mixblock(feat, lam=lam_bb, perm=perm_bb, size=size)
            x_bb = (1.0 - m_bb) * x + m_bb * x[perm_bb]
        else:
            x_bb = lam_bb * x + (1.0 - lam_bb) * x[perm_bb]
        logits_one = self.head_one(pooled_features(self.backbone, x))
        loss_one = F.cross_entropy(logits_one.float(), labels)
        loss_mix = mixed_cross_entropy(self.head_mix(pooled_features(self.backbone, x_bb)), labels, labels[perm_bb],
                                       lam=lam_bb)
        return AutoMixOutput(
            loss=loss_one + loss_mix + loss_mixblock + loss_mask, logits=logits_one, loss_one=loss_one,
            loss_mix=loss_mix, loss_mixblock=loss_mixblock, loss_mask=loss_mask, mask_mean=m_mb.mean().detach(),
        )


__all__ = ["AutoMixModel", "AutoMixOutput", "AutoMixPreTrainedModel", "MixBlock", "mask_ratio_loss"]
