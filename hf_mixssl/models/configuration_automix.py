"""Configuration of AutoMix (Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers",
ECCV 2022; official code in OpenMixup)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .config_fields import label_kwargs, set_backbone_fields


class AutoMixConfig(PretrainedConfig):
    r"""Configuration of :class:`AutoMixModel`.

    Args:
        backbone (`str`, defaults to `"resnet18"`): any timm model name with ``forward_intermediates``.
        backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` arguments.
        cifar_stem (`bool`, defaults to `False`): 3x3 stride-1 ResNet stem without max-pool.
        num_labels (`int`, defaults to 10): number of classes.
        mixblock_stage (`int`, defaults to 3): index into the backbone's ``feature_info`` of the feature map fed to
            the MixBlock (3 = ``layer3`` of a timm ResNet, 1/16 resolution with the ImageNet stem).
        mix_alpha (`float`, defaults to 2.0): both ``lam ~ Beta(alpha, alpha)`` (one for the MixBlock, one for
            the backbone).
        lam_concat (`bool`, defaults to `False`): concatenate ``lam`` as an extra input channel of the MixBlock
            (the ImageNet setting; off on CIFAR).
        mixblock_init_std (`float`, defaults to 0.01): N(0, std) initialisation of the MixBlock convolutions.
        mask_loss_weight (`float`, defaults to 0.1): weight of ``max(|1 - mean(M) - lam| - margin, 0)``.
        mask_loss_margin (`float`, defaults to 0.1): the margin above.
        mask_loss_schedule (`str`, defaults to `"constant"`): ``"constant"`` (CIFAR) or ``"cosine"`` (decayed to
            0 over training, ImageNet/ViT).
        lam_margin (`float`, defaults to 0.08): when the backbone's ``lam`` is within this margin of 0 or 1 the
            backbone uses plain Mixup instead of the MixBlock mask.
        momentum (`float`, defaults to 0.999): EMA coefficient of the momentum encoder at the start.
        momentum_final (`float`, defaults to 0.999999): EMA coefficient at the end (CIFAR; 0.99999 on ImageNet).
        momentum_start (`float`, defaults to 0.1): fraction of training during which the EMA coefficient is held
            at ``momentum``; from there on it follows the cosine of the whole run (OpenMixup's
            ``CosineScheduleHook(adjust_scope=[0.1, 1.0], warming_up="constant")``).
        mixblock_lr_scale (`float`, defaults to 1.0): MixBlock learning rate relative to the backbone's.
        mixblock_momentum (`float`, *optional*): SGD momentum of the MixBlock's parameter group (OpenMixup's
            ImageNet configs: ``paramwise_options={'mix_block': dict(momentum=0.)}``); default: the optimizer's.
        mixblock_min_lr (`float`, *optional*): the MixBlock's own cosine schedule ends at this learning rate
            (OpenMixup's ImageNet ``addtional_scheduler``: ``min_lr=0.001``); default: the run's schedule.
        image_size (`int`, defaults to 224): training resolution (recorded for evaluation and export).
        image_mean (`list[float]`, *optional*): normalisation mean used in training (default: ImageNet's).
        image_std (`list[float]`, *optional*): normalisation std used in training (default: ImageNet's).
    """

    model_type = "hf_mixssl_automix"

    def __init__(
        self,
        *,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        cifar_stem: bool = False,
        num_labels: int | None = None,
        mixblock_stage: int = 3,
        mix_alpha: float = 2.0,
        lam_concat: bool = False,
        mixblock_init_std: float = 0.01,
        mask_loss_weight: float = 0.1,
        mask_loss_margin: float = 0.1,
        mask_loss_schedule: str = "constant",
        lam_margin: float = 0.08,
        momentum: float = 0.999,
        momentum_final: float = 0.999999,
        momentum_start: float = 0.1,
        mixblock_lr_scale: float = 1.0,
        mixblock_momentum: float | None = None,
        mixblock_min_lr: float | None = None,
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        for field, value in (("mix_alpha", mix_alpha), ("mixblock_init_std", mixblock_init_std),
                             ("mixblock_lr_scale", mixblock_lr_scale)):
            if not value > 0:
                raise ValueError(f"{field} must be > 0, got {value!r}")
        for field, value in (("mask_loss_weight", mask_loss_weight), ("mask_loss_margin", mask_loss_margin)):
            if not value >= 0:
                raise ValueError(f"{field} must be >= 0, got {value!r}")
        if mask_loss_schedule not in ("constant", "cosine"):
            raise ValueError(f"mask_loss_schedule must be 'constant' or 'cosine', got {mask_loss_schedule!r}")
        if not 0.0 <= lam_margin < 0.5:
            raise ValueError(f"lam_margin must be in [0, 0.5), got {lam_margin!r}")
        if not 0.0 <= momentum <= momentum_final <= 1.0:
            raise ValueError(f"momentum and momentum_final must satisfy 0 <= momentum <= momentum_final <= 1, "
                             f"got {momentum!r}, {momentum_final!r}")
        if not 0.0 <= momentum_start < 1.0:
            raise ValueError(f"momentum_start must be in [0, 1), got {momentum_start!r}")
        for field, value in (("mixblock_momentum", mixblock_momentum), ("mixblock_min_lr", mixblock_min_lr)):
            if value is not None and not value >= 0:
                raise ValueError(f"{field} must be >= 0, got {value!r}")
        if not isinstance(mixblock_stage, int) or mixblock_stage < 0:
            raise ValueError(f"mixblock_stage must be a non-negative integer, got {mixblock_stage!r}")
        set_backbone_fields(self, backbone=backbone, backbone_kwargs=backbone_kwargs, cifar_stem=cifar_stem,
                            image_size=image_size, image_mean=image_mean, image_std=image_std)
        self.mixblock_stage = mixblock_stage
        self.mix_alpha = float(mix_alpha)
        self.lam_concat = lam_concat
        self.mixblock_init_std = float(mixblock_init_std)
        self.mask_loss_weight = float(mask_loss_weight)
        self.mask_loss_margin = float(mask_loss_margin)
        self.mask_loss_schedule = mask_loss_schedule
        self.lam_margin = float(lam_margin)
        self.momentum = float(momentum)
        self.momentum_final = float(momentum_final)
        self.momentum_start = float(momentum_start)
        self.mixblock_lr_scale = float(mixblock_lr_scale)
        self.mixblock_momentum = mixblock_momentum
        self.mixblock_min_lr = mixblock_min_lr
        super().__init__(**label_kwargs(num_labels, kwargs))
