"""EMP-SSL (Tong et al. 2023) as a ``transformers.PreTrainedModel`` over a timm backbone.

Per step, normalised images ``[B, C, H, W]`` -> ``n`` augmented patches each, built batched on the images' device
(:class:`hf_mixssl.multipatch.MultiPatchViews`) -> backbone -> ``Linear(4096) BN ReLU`` (pre-feature) ->
``Linear(4096) BN ReLU Linear(1024)`` -> L2 norm -> ``z: [n, B, 1024]`` ->
``loss = 200 * invariance + 1 * tcr`` (:func:`hf_mixssl.losses.emp_ssl_terms`; TCR over the global batch when
several ranks train).

Only sibling role modules are imported, so the file travels with the weights (``trust_remote_code``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbones import create_backbone, pooled_features
from .configuration_emp_ssl import EMPSSLConfig
from .distributed import gather_with_grad, world_size
from .heads import build_mlp
from .losses import emp_ssl_terms
from .multipatch import MultiPatchViews
from .pretrained import VisionPreTrainedModel, single_view
from .visualization import denormalize, image_grid

EVAL_SEED = 0  # bag-of-features patches come from a private generator: evaluation never moves training's RNG


@dataclass
class EMPSSLOutput(ModelOutput):
    """EMP-SSL output.

    Args:
        loss: ``invariance_weight * loss_invariance + tcr_weight * loss_tcr``.
        loss_invariance: ``-mean cos(z_i, zbar)`` (in [-1, 1]; -1 when all patches agree).
        loss_tcr: ``-mean_i TCR(Z_i)``.
        embeddings: ``z: [n, B, z_dim]``, L2-normalised.
        features: ``[B, D]`` bag-of-features, at inference only (then nothing else is set).
    """

    loss: torch.Tensor | None = None
    loss_invariance: torch.Tensor | None = None
    loss_tcr: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    features: torch.Tensor | None = None


class EMPSSLPreTrainedModel(VisionPreTrainedModel):
    config_class = EMPSSLConfig
    config: EMPSSLConfig
    base_model_prefix = "emp_ssl"


class EMPSSLModel(EMPSSLPreTrainedModel):
    """Backbone + pre-feature + projector; ``forward(pixel_values)`` builds the patches and returns the loss."""

    def __init__(self, config: EMPSSLConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(config.backbone, cifar_stem=config.cifar_stem, **config.backbone_kwargs)
        hidden = config.hidden_dim
        self.pre_feature = nn.Sequential(nn.Linear(self.backbone.num_features, hidden, bias=False),
                                         nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.projector = build_mlp([hidden, hidden, config.z_dim], norm=True)
        self.post_init()

    def views(self, num_patches: int) -> MultiPatchViews:
        cfg = self.config
        return MultiPatchViews(num_patches=num_patches, size=cfg.image_size, crop_scale=cfg.crop_scale,
                               mean=tuple(cfg.image_mean), std=tuple(cfg.image_std))

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> [0, 1] (what the patch generator augments)."""
        return denormalize(x.float(), self.config.image_mean, self.config.image_std)

    def _features(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, C, S, S]`` normalised patches -> ``(backbone [N, D], pre-feature [N, hidden])``."""
        h = pooled_features(self.backbone, patches)
        return h, self.pre_feature(h)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        patches: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> EMPSSLOutput:
        """``pixel_values: [B, C, H, W]`` (or ``[B, 1, C, H, W]``), normalised with ``image_mean/std``;
        ``patches [n*B, C, S, S]`` (patch-major, normalised) replaces the random ones. ``labels`` are ignored.
        In eval mode (or with ``return_loss=False``) the output is ``features`` only (:meth:`extract_features`)."""
        if self.returns_features(pixel_values, return_loss):
            return EMPSSLOutput(features=self.extract_features(pixel_values))
        x = single_view(pixel_values)
        cfg, b = self.config, x.shape[0]
        if patches is None:
            patches = self.views(cfg.num_patches)(self._unit(x))
        n = patches.shape[0] // b
        if n * b != patches.shape[0] or n < 2:
            raise ValueError(f"patches must hold n >= 2 patches per image (patch-major), got {patches.shape[0]} "
                             f"for {b} images")
        _, pre = self._features(patches)
        z = F.normalize(self.projector(pre).float(), dim=-1).view(n, b, -1)
        invariance, tcr = emp_ssl_terms(z, eps=cfg.tcr_eps, gather=gather_with_grad if world_size() > 1 else None)
        loss = cfg.invariance_weight * invariance + cfg.tcr_weight * tcr
        return EMPSSLOutput(loss=loss, loss_invariance=invariance, loss_tcr=tcr, embeddings=z)

    @torch.no_grad()
    def extract_features(self, pixel_values: torch.Tensor, *, num_patches: int | None = None) -> torch.Tensor:
        """Bag-of-features: ``eval_features`` averaged over ``num_patches`` (default ``eval_patches``) augmented
        patches per image -> ``[B, D]``; with 0 patches, the features of the whole image."""
        x = single_view(pixel_values)
        cfg = self.config
        n = cfg.eval_patches if num_patches is None else num_patches
        pick = 0 if cfg.eval_features == "backbone" else 1
        if n == 0:
            return self._features(F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False))[pick]
        generator = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
        unit = self._unit(x)
        total = None
        chunk = max(1, min(n, 4096 // max(1, x.shape[0])))  # bound the memory of one forward
        done = 0
        while done < n:
            k = min(chunk, n - done)
            f = self._features(self.views(k)(unit, generator=generator))[pick].float()
            f = f.view(k, x.shape[0], -1).sum(dim=0)
            total = f if total is None else total + f
            done += k
        return total / n

    def get_encoder(self) -> nn.Module:
        """The trained timm backbone."""
        return self.backbone

    @torch.no_grad()
    def pictures(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Rows: the images, then up to 4 of their augmented patches (de-normalised)."""
        x = self._unit(single_view(pixel_values))
        n = min(4, self.config.num_patches)
        patches = self._unit(self.views(n)(x))
        patches = patches.view(n, x.shape[0], *patches.shape[1:])
        originals = F.interpolate(x, size=self.config.image_size, mode="bilinear", align_corners=False).clamp(0, 1)
        return {"emp_ssl_patches": image_grid([originals, *patches])}


__all__ = ["EMPSSLModel", "EMPSSLOutput", "EMPSSLPreTrainedModel"]
