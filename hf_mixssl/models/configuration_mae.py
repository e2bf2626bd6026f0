"""Configuration of MAE (masked autoencoder pretraining, He et al. 2021) on a timm Vision Transformer."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .config_fields import set_backbone_fields

FEATURE_POOLS = ("cls", "mean")


class MAEConfig(PretrainedConfig):
    r"""Configuration of :class:`MAEModel`.

    Args:
        backbone (`str`, defaults to `"vit_base_patch16_224"`): a timm Vision Transformer name (class token,
            absolute position embedding); its ``pos_embed`` is replaced by fixed 2-D sin-cos values.
        backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` arguments, e.g. ``{"patch_size": 4}``;
            ``img_size`` is always ``image_size``.
        image_size (`int`, defaults to 224): input resolution.
        image_mean (`list[float]`, *optional*): normalisation mean used in training (default: ImageNet's).
        image_std (`list[float]`, *optional*): normalisation std used in training (default: ImageNet's).
        mask_ratio (`float`, defaults to 0.75): fraction of patches removed per sample.
        decoder_embed_dim (`int`, defaults to 512): decoder width.
        decoder_depth (`int`, defaults to 8): decoder Transformer blocks.
        decoder_num_heads (`int`, defaults to 16): decoder attention heads.
        decoder_mlp_ratio (`float`, defaults to 4.0): decoder MLP width / embed dim.
        norm_pix_loss (`bool`, defaults to `True`): targets are per-patch normalised pixels (the paper's best).
        feature_pool (`str`, defaults to `"cls"`): features for kNN / linear probes: the class token (``"cls"``)
            or the mean of the patch tokens (``"mean"``), after the encoder's final norm.
    """

    model_type = "hf_mixssl_mae"

    def __init__(
        self,
        *,
        backbone: str = "vit_base_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        mask_ratio: float = 0.75,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        feature_pool: str = "cls",
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
        for name, value in (("decoder_embed_dim", decoder_embed_dim), ("decoder_depth", decoder_depth),
                            ("decoder_num_heads", decoder_num_heads)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if decoder_embed_dim % decoder_num_heads or decoder_embed_dim % 4:
            raise ValueError(f"decoder_embed_dim ({decoder_embed_dim}) must be divisible by 4 and by "
                             f"decoder_num_heads ({decoder_num_heads})")
        if not decoder_mlp_ratio > 0:
            raise ValueError(f"decoder_mlp_ratio must be positive, got {decoder_mlp_ratio!r}")
        if feature_pool not in FEATURE_POOLS:
            raise ValueError(f"feature_pool must be one of {FEATURE_POOLS}, got {feature_pool!r}")
        kwargs.pop("cifar_stem", None)  # stored by set_backbone_fields; a ViT has no ResNet stem
        set_backbone_fields(self, backbone=backbone, backbone_kwargs=backbone_kwargs, cifar_stem=False,
                            image_size=image_size, image_mean=image_mean, image_std=image_std)
        self.mask_ratio = float(mask_ratio)
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = float(decoder_mlp_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.feature_pool = feature_pool
        super().__init__(**kwargs)
