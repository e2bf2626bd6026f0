"""Configuration of the supervised mixup classifier (Mixup, CutMix, FMix, ResizeMix, GridMix, SmoothMix,
SaliencyMix, ManifoldMix), with OpenMixup's multi-policy sampling."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .config_fields import label_kwargs, set_backbone_fields

MIX_MODES = ("vanilla", "mixup", "cutmix", "fmix", "resizemix", "gridmix", "smoothmix", "saliencymix", "manifoldmix")


class MixupClassifierConfig(PretrainedConfig):
    r"""Configuration of :class:`MixupForImageClassification`.

    Args:
        backbone (`str`, defaults to `"resnet18"`): any timm model name.
        backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` arguments.
        cifar_stem (`bool`, defaults to `False`): 3x3 stride-1 ResNet stem without max-pool.
        num_labels (`int`, defaults to 10): number of classes (a standard transformers field; a saved config
            restores it from ``id2label``).
        mix_modes (`list[str]`, defaults to `["mixup"]`): policies sampled per step, from :data:`MIX_MODES`
            (``"vanilla"`` = no mixing).
        mix_probs (`list[float]`, *optional*): sampling probability of each mode (uniform when absent);
            normalised to sum to 1.
        mix_alpha (`float` or `list[float]`, defaults to 1.0): ``lam ~ Beta(alpha, alpha)``, one value or one per
            mode (OpenMixup uses 1.0 for Mixup/CutMix on ImageNet, 0.2 for Mixup on CIFAR-style recipes).
        resizemix_scope (`list[float]`, defaults to `[0.1, 0.8]`): ResizeMix's paste-scale range.
        resizemix_use_alpha (`bool`, defaults to `True`): ResizeMix's scale ``tau ~ Beta(alpha, alpha)``, redrawn
            uniformly in the scope when outside it (OpenMixup's CIFAR and ImageNet configs); ``False`` draws it
            uniformly in the scope (the ResizeMix paper).
        smoothmix_label_weight (`str`, defaults to `"official"`): ``"official"`` weights the image's own label by
            the blob's mass, the *partner's* pixel share (OpenMixup ``smoothmix.py``, whose label order looks
            inverted); ``"own_share"`` weights it by its own pixel share.
        manifoldmix_stages (`list[int]`, defaults to `[0, 1, 2]`): where ManifoldMix may mix, numbered as
            OpenMixup's ``layer=(0, 3)``: 0 = the input images, ``k >= 1`` = the output of the backbone's
            ``feature_info[k]`` (``layer{k}`` of a ResNet).
        label_smoothing (`float`, defaults to 0.0): label smoothing of the cross-entropy.
        image_size (`int`, defaults to 224): training resolution (recorded for evaluation and export).
        image_mean (`list[float]`, *optional*): normalisation mean used in training (default: ImageNet's).
        image_std (`list[float]`, *optional*): normalisation std used in training (default: ImageNet's).
    """

    model_type = "hf_mixssl_mixup"

    def __init__(
        self,
        *,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        cifar_stem: bool = False,
        num_labels: int | None = None,
        mix_modes: list[str] | None = None,
        mix_probs: list[float] | None = None,
        mix_alpha: float | list[float] = 1.0,
        resizemix_scope: list[float] | None = None,
        resizemix_use_alpha: bool = True,
        smoothmix_label_weight: str = "official",
        manifoldmix_stages: list[int] | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        mix_modes = list(mix_modes or ["mixup"])
        unknown = [m for m in mix_modes if m not in MIX_MODES]
        if unknown or not mix_modes:
            raise ValueError(f"mix_modes must be a non-empty list from {MIX_MODES}, got {mix_modes!r}")
        if mix_probs is None:
            mix_probs = [1.0 / len(mix_modes)] * len(mix_modes)
        if len(mix_probs) != len(mix_modes) or any(p < 0 for p in mix_probs) or sum(mix_probs) <= 0:
            raise ValueError(f"mix_probs must be {len(mix_modes)} non-negative numbers with a positive sum, "
                             f"got {mix_probs!r}")
        alphas = mix_alpha if isinstance(mix_alpha, (list, tuple)) else [mix_alpha] * len(mix_modes)
        if len(alphas) != len(mix_modes) or any(not a > 0 for a in alphas):
            raise ValueError(f"mix_alpha must be > 0 (one value or one per mode), got {mix_alpha!r}")
        scope = list(resizemix_scope or [0.1, 0.8])
        if len(scope) != 2 or not 0.0 < scope[0] <= scope[1] < 1.0:
            raise ValueError(f"resizemix_scope must be [low, high] with 0 < low <= high < 1, got {scope!r}")
        if smoothmix_label_weight not in ("official", "own_share"):
            raise ValueError(f"smoothmix_label_weight must be 'official' or 'own_share', got {smoothmix_label_weight!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        set_backbone_fields(self, backbone=backbone, backbone_kwargs=backbone_kwargs, cifar_stem=cifar_stem,
                            image_size=image_size, image_mean=image_mean, image_std=image_std)
        self.mix_modes = mix_modes
        total = float(sum(mix_probs))
        self.mix_probs = [float(p) / total for p in mix_probs]
        self.mix_alpha = mix_alpha if isinstance(mix_alpha, (int, float)) else list(mix_alpha)
        self.resizemix_scope = scope
        self.resizemix_use_alpha = bool(resizemix_use_alpha)
        self.smoothmix_label_weight = smoothmix_label_weight
        self.manifoldmix_stages = list(manifoldmix_stages if manifoldmix_stages is not None else [0, 1, 2])
        self.label_smoothing = float(label_smoothing)
        super().__init__(**label_kwargs(num_labels, kwargs))

    def alpha_of(self, mode: str) -> float:
        """The Beta parameter of ``mode``."""
        if isinstance(self.mix_alpha, (int, float)):
            return float(self.mix_alpha)
        return float(self.mix_alpha[self.mix_modes.index(mode)])
