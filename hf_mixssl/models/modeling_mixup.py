"""A supervised image classifier trained with a mixup policy sampled per step (OpenMixup's multi-policy
sampler): Mixup, CutMix, FMix, ResizeMix, GridMix, SmoothMix, SaliencyMix or ManifoldMix.

Only sibling role modules are imported, so the file travels with the weights (``trust_remote_code``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbones import create_backbone, pooled_features
from .configuration_mixup import MixupClassifierConfig
from .losses import mixed_cross_entropy
from .visualization import denormalize, image_grid
from .mixing import MixResult, cutmix, fmix, gridmix, mixup, resizemix, saliencymix, sample_lam, smoothmix
from .pretrained import VisionPreTrainedModel, record_auto_classes, single_view


@dataclass
class MixupClassifierOutput(ModelOutput):
    """Classifier output.

    Args:
        loss: mixed cross-entropy in training (``lam*CE(y_a) + (1-lam)*CE(y_b)``), plain CE otherwise.
        logits: ``[B, num_labels]``.
        mix_lam: the ``lam`` of this step's mixture (``None`` without mixing).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mix_lam: torch.Tensor | None = None


class MixupPreTrainedModel(VisionPreTrainedModel):
    config_class = MixupClassifierConfig
    config: MixupClassifierConfig
    base_model_prefix = "mixup"


class MixupForImageClassification(MixupPreTrainedModel):
    """timm backbone + linear classifier; in training with labels, each step mixes the batch with one policy."""

    def __init__(self, config: MixupClassifierConfig) -> None:
        super().__init__(config)
        record_auto_classes(config, type(self), ("AutoModel", "AutoModelForImageClassification"))
        self.backbone = create_backbone(config.backbone, cifar_stem=config.cifar_stem, **config.backbone_kwargs)
        self.classifier = nn.Linear(self.backbone.num_features, config.num_labels)
        if "manifoldmix" in config.mix_modes:
            n_stages = len(self.backbone.feature_info)
            bad = [s for s in config.manifoldmix_stages if not 0 <= s < n_stages]
            if bad or not config.manifoldmix_stages:
                raise ValueError(f"manifoldmix_stages must index the backbone's {n_stages} feature stages, "
                                 f"got {config.manifoldmix_stages}")
        self.post_init()

    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, D]`` (kNN / linear probes)."""
        return pooled_features(self.backbone, pixel_values)

    @torch.no_grad()
    def pictures(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per input-space policy: a grid of images, partners and mixed images (``pixel_values: [n, C, H, W]``)."""
        pixel_values = single_view(pixel_values)
        mean, std = self.config.image_mean, self.config.image_std
        perm = torch.randperm(pixel_values.shape[0]).to(pixel_values.device)
        out = {}
        for mode in self.config.mix_modes:
            if mode in ("vanilla", "manifoldmix"):
                continue
            mixed = self.mix_inputs(pixel_values, labels, mode=mode, perm=perm)
            out[f"mix_{mode}"] = image_grid([denormalize(t, mean, std) for t in (pixel_values, pixel_values[perm], mixed.x)])
        return out

    def get_encoder(self) -> nn.Module:
        """The trained timm backbone."""
        return self.backbone

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled_features(self.backbone, x))

    def sample_mode(self, generator: torch.Generator | None = None) -> str:
        """One policy from ``config.mix_modes`` with ``config.mix_probs``."""
        probs = torch.tensor(self.config.mix_probs)
        return self.config.mix_modes[int(torch.multinomial(probs, 1, generator=generator))]

    def mix_inputs(
        self, x: torch.Tensor, y: torch.Tensor, *, mode: str, lam: float | None = None,
        perm: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> MixResult:
        """Apply an input-space policy (every mode except ``vanilla`` and ``manifoldmix``).

        ``lam ~ Beta(alpha, alpha)`` of the mode unless given; ResizeMix draws its own scale ``tau`` (a given
        ``lam`` is used as ``tau``, as OpenMixup does), SmoothMix ignores ``lam`` (its blob size is drawn).
        """
        cfg = self.config
        if perm is None:
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        if mode == "resizemix":
            return resizemix(x, y, perm=perm, scope=tuple(cfg.resizemix_scope), use_alpha=cfg.resizemix_use_alpha,
                             alpha=cfg.alpha_of(mode), lam=lam, generator=generator)
        if mode == "smoothmix":
            return smoothmix(x, y, lam=lam, perm=perm, label_weight=cfg.smoothmix_label_weight, generator=generator)
        if lam is None:
            lam = sample_lam(cfg.alpha_of(mode), generator=generator)
        if mode == "mixup":
            return mixup(x, y, lam=lam, perm=perm)
        if mode == "cutmix":
            return cutmix(x, y, lam=lam, perm=perm, generator=generator)
        if mode == "fmix":
            return fmix(x, y, lam=lam, perm=perm, generator=generator)
        if mode == "gridmix":
            return gridmix(x, y, lam=lam, perm=perm, generator=generator)
        if mode == "saliencymix":
            return saliencymix(x, y, lam=lam, perm=perm)
        raise ValueError(f"{mode!r} is not an input-space mix mode")

    def _manifold_logits(self, x: torch.Tensor, *, lam: float, perm: torch.Tensor, stage: int) -> torch.Tensor:
        """ManifoldMix (Verma et al., ICML 2019): mix at one point of the backbone, numbered as OpenMixup's
        ``ResNet_Mix`` numbers its ``layer``: 0 mixes the input images, ``k >= 1`` the output of residual stage
        ``k`` (timm's ``feature_info[k]``: ``layer1``, ``layer2``, ... of a ResNet).

        A forward hook on that module replaces its output with ``lam * h + (1 - lam) * h[perm]``; the rest of the
        network runs on the mixed features.
        """
        if stage == 0:
            return self._logits(x * lam + x[perm] * (1.0 - lam))
        module = self.backbone.get_submodule(self.backbone.feature_info[stage]["module"])

        def mix_hook(_module, _inputs, h):
            return h * lam + h[perm] * (1.0 - lam)

        handle = module.register_forward_hook(mix_hook)
        try:
            return self._logits(x)
        finally:
            handle.remove()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mix_mode: str | None = None,
        lam: float | None = None,
        perm: torch.Tensor | None = None,
        **kwargs,
    ) -> MixupClassifierOutput:
        """``pixel_values: [B, C, H, W]`` (or ``[B, 1, C, H, W]``); mixing happens in training with ``labels``.

        ``mix_mode`` / ``lam`` / ``perm`` fix the otherwise random policy, ratio and partners.
        """
        pixel_values = single_view(pixel_values)
        smoothing = self.config.label_smoothing
        if not (self.training and labels is not None):
            logits = self._logits(pixel_values)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing) if labels is not None else None
            return MixupClassifierOutput(loss=loss, logits=logits)
        mode = mix_mode or self.sample_mode()
        if mode == "vanilla":
            logits = self._logits(pixel_values)
            return MixupClassifierOutput(loss=F.cross_entropy(logits.float(), labels, label_smoothing=smoothing),
                                         logits=logits)
        if mode == "manifoldmix":
            lam = lam if lam is not None else sample_lam(self.config.alpha_of(mode))
            perm = perm if perm is not None else torch.randperm(pixel_values.shape[0]).to(pixel_values.device)
            stages = self.config.manifoldmix_stages
            stage = stages[int(torch.randint(len(stages), (1,)))]
            logits = self._manifold_logits(pixel_values, lam=lam, perm=perm, stage=stage)
            y_a, y_b = labels, labels[perm]
        else:
            mixed = self.mix_inputs(pixel_values, labels, mode=mode, lam=lam, perm=perm)
            logits, y_a, y_b, lam = self._logits(mixed.x), mixed.y_a, mixed.y_b, mixed.lam
        loss = mixed_cross_entropy(logits, y_a, y_b, lam=lam, label_smoothing=smoothing)
        return MixupClassifierOutput(loss=loss, logits=logits, mix_lam=torch.tensor(float(lam)))


__all__ = ["MixupClassifierOutput", "MixupForImageClassification", "MixupPreTrainedModel"]
