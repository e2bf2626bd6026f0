"""View generators: each maps one RGB PIL image to a tensor ``[V, C, H, W]`` of augmented views.

Recipes follow the official code (METHODS.md): MoCo v1 (``main_moco.py``, ``--aug-plus`` off), MoCo v2
(``--aug-plus``), the MoCo CIFAR Colab, MoCo v3's asymmetric BYOL-style pair, the single classification
view, and MAE's single crop-and-flip view. Randomness comes from
torch's global generator, which the data pipeline seeds per sample so views are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from ..models.config_fields import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

VIEW_RECIPES = ("moco_v1", "moco_v2", "moco_cifar", "moco_v3", "classify", "mae", "emp_ssl")


class MultiView:
    """Apply one transform per view and stack: ``PIL -> [V, C, H, W]``."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([t(image) for t in self.transforms])


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _blur(size: int, p: float) -> v2.Transform:
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the image side, odd (SimCLR / MoCo v2)
    return v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)


def view_transform(
    recipe: str,
    *,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float | None = None,
) -> MultiView:
    """The two-view generator for a recipe in :data:`VIEW_RECIPES`.

    ``min_scale`` overrides the RandomResizedCrop lower scale (0.2 for MoCo v1/v2, 0.08 otherwise).
    """
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {size}")
    flip = v2.RandomHorizontalFlip()
    tail = _to_tensor(mean, std)
    if recipe == "moco_v1":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.2, 1.0), antialias=True)
        t = v2.Compose([crop, v2.RandomGrayscale(0.2), v2.ColorJitter(0.4, 0.4, 0.4, 0.4), flip, *tail])
        return MultiView([t, t])
    if recipe == "moco_v2":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.2, 1.0), antialias=True)
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
        t = v2.Compose([crop, jitter, v2.RandomGrayscale(0.2), _blur(size, 0.5), flip, *tail])
        return MultiView([t, t])
    if recipe == "moco_cifar":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.08, 1.0), antialias=True)
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
        t = v2.Compose([crop, flip, jitter, v2.RandomGrayscale(0.2), *tail])
        return MultiView([t, t])
    if recipe == "moco_v3":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.08, 1.0), antialias=True)
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        t1 = v2.Compose([crop, jitter, v2.RandomGrayscale(0.2), _blur(size, 1.0), flip, *tail])
        t2 = v2.Compose([crop, jitter, v2.RandomGrayscale(0.2), _blur(size, 0.1),
                         v2.RandomSolarize(128, p=0.2), flip, *tail])  # PIL uint8 threshold
        return MultiView([t1, t2])
    if recipe == "classify":  # one view: CIFAR-style pad-and-crop for small images, else Inception crop
        if size <= 64:
            crop = v2.RandomCrop(size, padding=size // 8)
        else:
            crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.08, 1.0), antialias=True)
        return MultiView([v2.Compose([crop, flip, *tail])])
    if recipe == "mae":  # one view: RandomResizedCrop(0.2-1, bicubic) + flip only (main_pretrain.py)
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.2, 1.0), antialias=True,
                                    interpolation=v2.InterpolationMode.BICUBIC)
        return MultiView([v2.Compose([crop, flip, *tail])])
    if recipe == "emp_ssl":  # the whole image: the model cuts its augmented patches batched on the device
        return MultiView([v2.Compose([v2.Resize((size, size), antialias=True), *tail])])
    raise ValueError(f"unknown view recipe {recipe!r}; choose one of {VIEW_RECIPES}")


def eval_transform(
    *, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Deterministic evaluation transform ``PIL -> [C, H, W]``: resize (+ center crop above 64 px)."""
    if size <= 64:
        resize = [v2.Resize((size, size), antialias=True)]
    else:
        resize = [v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*resize, *_to_tensor(mean, std)])
