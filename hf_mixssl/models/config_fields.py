"""Fields every method's config shares: the timm backbone, the recorded preprocessing, and class labels.

Config files import this sibling module only (no torch/timm), so it travels with ``trust_remote_code`` code.
"""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The settings every config shares (set by set_backbone_fields).
BACKBONE_FIELDS = ("backbone", "backbone_kwargs", "cifar_stem", "image_size", "image_mean", "image_std")


def set_backbone_fields(
    config: Any,
    *,
    backbone: str,
    backbone_kwargs: dict[str, Any] | None,
    cifar_stem: bool,
    image_size: int,
    image_mean: list[float] | None,
    image_std: list[float] | None,
) -> None:
    """Validate and set ``backbone``, ``backbone_kwargs``, ``cifar_stem``, ``image_size``, ``image_mean``, ``image_std``."""
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"backbone must be a timm model name, got {backbone!r}")
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    mean, std = list(image_mean or IMAGENET_MEAN), list(image_std or IMAGENET_STD)
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"image_mean/image_std must have equal lengths and positive std, got {mean}, {std}")
    config.backbone = backbone
    config.backbone_kwargs = dict(backbone_kwargs or {})
    config.cifar_stem = cifar_stem
    config.image_size = image_size
    config.image_mean = mean
    config.image_std = std


def label_kwargs(num_labels: int | None, kwargs: dict[str, Any], *, default: int = 10) -> dict[str, Any]:
    """``PretrainedConfig`` kwargs for the class count: a saved config restores it from ``id2label``."""
    if num_labels is None and "id2label" not in kwargs:
        num_labels = default
    if num_labels is not None:
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}")
        kwargs["num_labels"] = num_labels
    return kwargs
