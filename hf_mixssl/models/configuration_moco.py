"""Configuration of MoCo v1 / v2 / v3 (He et al. 2020; Chen et al. 2020; Chen, Xie, He 2021)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .config_fields import set_backbone_fields

_VERSIONS = (1, 2, 3)
_EVAL_FEATURES = ("backbone", "projection")


class MoCoConfig(PretrainedConfig):
    r"""Configuration of a MoCo model (:class:`MoCoModel`).

    Args:
        version (`int`, defaults to 2):
            1 = linear head, queue; 2 = MLP head, queue; 3 = no queue, projector + predictor with BN,
            symmetric ``2*tau`` loss over all-gathered keys, cosine momentum schedule.
        backbone (`str`, defaults to `"resnet50"`): any timm model name.
        backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` arguments (e.g. ``img_size``).
        cifar_stem (`bool`, defaults to `False`): 3x3 stride-1 ResNet stem without max-pool.
        proj_hidden_dim (`int`, defaults to 0): projector hidden width; 0 means the backbone's feature
            width (MoCo v2's ``Linear(d, d)``). MoCo v3 uses 4096.
        proj_dim (`int`, defaults to 128): output dimension of the projection (v1/v2 128, v3 256).
        proj_num_layers (`int`, defaults to 2): Linear layers in the projector (v1 1, v2 2, v3 ResNet 2,
            v3 ViT 3).
        pred_hidden_dim (`int`, defaults to 4096): predictor hidden width (v3 only).
        tau (`float`, defaults to 0.2): softmax temperature (v1 0.07, v2 0.2, CIFAR 0.1, v3 1.0 / 0.2).
        queue_size (`int`, defaults to 65536): number of negative keys (v1/v2; CIFAR 4096).
        momentum (`float`, defaults to 0.999): key-encoder momentum (the base value for v3's cosine schedule).
        momentum_schedule (`str`, defaults to `"constant"`): ``"constant"`` or ``"cosine"`` (to 1.0).
        symmetric (`bool`, defaults to `False`): v1/v2 only: both ``(q1, k2)`` and ``(q2, k1)`` terms, both
            key sets enqueued. v3 is always symmetric.
        shuffle_bn (`bool`, defaults to `True`): compute keys on a batch shuffled across ranks (v1/v2).
        bn_splits (`int`, defaults to 1): SplitBatchNorm splits in the backbone; 8 simulates 8 GPUs on one
            device (MoCo CIFAR Colab).
        freeze_patch_embed (`bool`, defaults to `False`): v3 ViT trick: a fixed random patch projection.
        vit_init (`str`, defaults to `"timm"`): ``"timm"`` keeps timm's ViT (learned position embedding, timm init);
            ``"moco_v3"`` gives moco-v3 ``vits.py``'s: a frozen 2-D sin-cos position embedding and its own init.
        eval_features (`str`, defaults to `"backbone"`): features used by kNN / probes: pooled backbone
            output or the L2-normalised projection (the MoCo Colab's 128-d kNN monitor).
        unmix (`bool`, defaults to `False`): add Un-Mix's image-mixture terms (Shen et al., AAAI 2022): view 1 is
            mixed with its batch-reversed copy and ``lam*L(q_mix, k) + (1-lam)*L(q_mix.flip(0), k)`` is added
            against the other view's keys (against both key sets when symmetric). Mixed keys are never enqueued.
        unmix_global_prob (`float`, defaults to 0.5): probability P of a global mixup (else a CutMix region).
        unmix_beta (`float`, defaults to 1.0): ``lam ~ Beta(beta, beta)``.
        image_size (`int`, defaults to 224): training resolution (recorded for evaluation and export).
        image_mean (`list[float]`, *optional*): normalisation mean used in training (default: ImageNet's).
        image_std (`list[float]`, *optional*): normalisation std used in training (default: ImageNet's).
    """

    model_type = "hf_mixssl_moco"

    def __init__(
        self,
        *,
        version: int = 2,
        backbone: str = "resnet50",
        backbone_kwargs: dict[str, Any] | None = None,
        cifar_stem: bool = False,
        proj_hidden_dim: int = 0,
        proj_dim: int = 128,
        proj_num_layers: int = 2,
        pred_hidden_dim: int = 4096,
        tau: float = 0.2,
        queue_size: int = 65536,
        momentum: float = 0.999,
        momentum_schedule: str = "constant",
        symmetric: bool = False,
        shuffle_bn: bool = True,
        bn_splits: int = 1,
        freeze_patch_embed: bool = False,
        vit_init: str = "timm",
        eval_features: str = "backbone",
        unmix: bool = False,
        unmix_global_prob: float = 0.5,
        unmix_beta: float = 1.0,
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        if version not in _VERSIONS:
            raise ValueError(f"version must be one of {_VERSIONS}, got {version!r}")
        for field, value in (("proj_dim", proj_dim), ("proj_num_layers", proj_num_layers),
                             ("pred_hidden_dim", pred_hidden_dim), ("queue_size", queue_size),
                             ("bn_splits", bn_splits)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if not isinstance(proj_hidden_dim, int) or proj_hidden_dim < 0:
            raise ValueError(f"proj_hidden_dim must be >= 0 (0 = backbone width), got {proj_hidden_dim!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if momentum_schedule not in ("constant", "cosine"):
            raise ValueError(f"momentum_schedule must be 'constant' or 'cosine', got {momentum_schedule!r}")
        if vit_init not in ("timm", "moco_v3"):
            raise ValueError(f"vit_init must be 'timm' or 'moco_v3', got {vit_init!r}")
        if eval_features not in _EVAL_FEATURES:
            raise ValueError(f"eval_features must be one of {_EVAL_FEATURES}, got {eval_features!r}")
        if not 0.0 <= unmix_global_prob <= 1.0:
            raise ValueError(f"unmix_global_prob must be in [0, 1], got {unmix_global_prob!r}")
        if not unmix_beta > 0:
            raise ValueError(f"unmix_beta must be > 0, got {unmix_beta!r}")
        set_backbone_fields(self, backbone=backbone, backbone_kwargs=backbone_kwargs, cifar_stem=cifar_stem,
                            image_size=image_size, image_mean=image_mean, image_std=image_std)
        self.version = version
        self.proj_hidden_dim = proj_hidden_dim
        self.proj_dim = proj_dim
        self.proj_num_layers = proj_num_layers
        self.pred_hidden_dim = pred_hidden_dim
        self.tau = float(tau)
        self.queue_size = queue_size
        self.momentum = float(momentum)
        self.momentum_schedule = momentum_schedule
        self.symmetric = symmetric
        self.shuffle_bn = shuffle_bn
        self.bn_splits = bn_splits
        self.freeze_patch_embed = freeze_patch_embed
        self.vit_init = vit_init
        self.eval_features = eval_features
        self.unmix = unmix
        self.unmix_global_prob = float(unmix_global_prob)
        self.unmix_beta = float(unmix_beta)
        super().__init__(**kwargs)
