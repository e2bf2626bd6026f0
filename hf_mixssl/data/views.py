"""View generators: each maps one RGB PIL image to a ``uint8`` tensor ``[V, C, H, W]`` of augmented views.

Recipes follow the official code (METHODS.md): MoCo v1 (``main_moco.py``, ``--aug-plus`` off), MoCo v2
(``--aug-plus``), the MoCo CIFAR Colab, MoCo v3's asymmetric BYOL-style pair, the single classification
view, and MAE's single crop-and-flip view. Every op runs on the PIL image with PIL's own kernels, as in the
official pipelines (the Gaussian blur is PIL's ``ImageFilter.GaussianBlur``, MoCo's ``loader.GaussianBlur``;
torchvision's v2 blur on a PIL image is a tensor convolution and a round trip). Views leave the workers as
``uint8`` (a quarter of float32's bytes) and are normalised where they are used, on the training device
(:meth:`Views.finish`). Randomness comes from torch's global generator, which the data pipeline seeds per
sample so views are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from ..models.config_fields import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

VIEW_RECIPES = ("moco_v1", "moco_v2", "moco_cifar", "moco_v3", "classify", "mae", "emp_ssl")


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [..., C, H, W]`` -> float32 ``(x / 255 - mean) / std`` on ``x``'s device (float input: as is).

    Computed as ``x * (1 / (255 std)) - mean / std`` in place (two passes over the batch instead of four); it
    differs from torchvision's ``ToDtype(scale=True)`` + ``Normalize`` by float32 rounding only.
    """
    if x.dtype != torch.uint8:
        return x
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1) / std_t
    return x.float().mul_(scale).sub_(shift)


class Views:
    """Apply one transform per view: ``PIL -> uint8 [V, C, H, W]`` (``stack=False``: one view ``[C, H, W]``),
    with the normalisation the consumer applies on its device."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]], *, mean: Sequence[float],
                 std: Sequence[float], stack: bool = True) -> None:
        self.transforms = list(transforms)
        self.mean, self.std, self.stack = tuple(mean), tuple(std), stack

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not self.stack:
            return self.transforms[0](image)
        return torch.stack([t(image) for t in self.transforms])

    def finish(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """On the device: ``uint8`` views -> normalised float32 (``params`` is for device augmentation)."""
        return normalize(x, self.mean, self.std)


class PILGaussianBlur:
    """With probability ``p``, PIL's ``GaussianBlur(radius=sigma)``, ``sigma ~ U(0.1, 2.0)`` (MoCo v2's
    ``moco/loader.py`` ``GaussianBlur``, drawn from torch's generator instead of ``random`` so that the
    per-sample seed fixes it)."""

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.sigma = p, sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= self.p:
            return image
        lo, hi = self.sigma
        return image.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * float(torch.rand(()))))


def view_transform(
    recipe: str,
    *,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float | None = None,
) -> Views:
    """The view generator for a recipe in :data:`VIEW_RECIPES` (``uint8`` views; ``mean``/``std`` go with it).

    ``min_scale`` overrides the RandomResizedCrop lower scale (0.2 for MoCo v1/v2, 0.08 otherwise).
    """
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {size}")
    flip = v2.RandomHorizontalFlip()
    tail = [v2.ToImage()]  # uint8; normalised on the device

    def views(*transforms: Callable) -> Views:
        return Views(transforms, mean=mean, std=std)

    if recipe == "moco_v1":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.2, 1.0), antialias=True)
        t = v2.Compose([crop, v2.RandomGrayscale(0.2), v2.ColorJitter(0.4, 0.4, 0.4, 0.4), flip, *tail])
        return views(t, t)
    if recipe == "moco_v2":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.2, 1.0), antialias=True)
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
        t = v2.Compose([crop, jitter, v2.RandomGrayscale(0.2), PILGaussianBlur(0.5), flip, *tail])
        return views(t, t)
    if recipe == "moco_cifar":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.08, 1.0), antialias=True)
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
        t = v2.Compose([crop, flip, jitter, v2.RandomGrayscale(0.2), *tail])
        return views(t, t)
    if recipe == "moco_v3":
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.08, 1.0), antialias=True)
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        t1 = v2.Compose([crop, jitter, v2.RandomGrayscale(0.2), PILGaussianBlur(1.0), flip, *tail])
        t2 = v2.Compose([crop, jitter, v2.RandomGrayscale(0.2), PILGaussianBlur(0.1),
                         v2.RandomSolarize(128, p=0.2), flip, *tail])  # PIL's ImageOps.solarize on a PIL image
        return views(t1, t2)
    if recipe == "classify":  # one view: CIFAR-style pad-and-crop for small images, else Inception crop
        if size <= 64:
            crop = v2.RandomCrop(size, padding=size // 8)
        else:
            crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.08, 1.0), antialias=True)
        return views(v2.Compose([crop, flip, *tail]))
    if recipe == "mae":  # one view: RandomResizedCrop(0.2-1, bicubic) + flip only (main_pretrain.py)
        crop = v2.RandomResizedCrop(size, scale=(min_scale or 0.2, 1.0), antialias=True,
                                    interpolation=v2.InterpolationMode.BICUBIC)
        return views(v2.Compose([crop, flip, *tail]))
    if recipe == "emp_ssl":  # the whole image: the model cuts its augmented patches batched on the device
        return views(v2.Compose([v2.Resize((size, size), antialias=True), *tail]))
    raise ValueError(f"unknown view recipe {recipe!r}; choose one of {VIEW_RECIPES}")


def eval_transform(
    *, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> Views:
    """Deterministic evaluation transform ``PIL -> uint8 [C, H, W]``: resize (+ center crop above 64 px) with
    ``interpolation`` (``bicubic`` for MAE's probe)."""
    mode = v2.InterpolationMode(interpolation)
    if size <= 64:
        resize = [v2.Resize((size, size), interpolation=mode, antialias=True)]
    else:
        resize = [v2.Resize(int(round(size * 256 / 224)), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    return Views([v2.Compose([*resize, v2.ToImage()])], mean=mean, std=std, stack=False)
