"""EMP-SSL's multi-patch view generator, batched on tensors (on the GPU when the images are there).

The official generator (``dataset/aug.py``) runs one PIL pipeline per patch: 20-200 of them per image. Here
one call turns images ``[B, C, H, W]`` in [0, 1] into ``[n*B, C, S, S]`` patches, patch-major (row
``i*B + b`` is patch ``i`` of image ``b``, so ``.view(n, B, ...)`` gives the per-patch chunks), with the same
augmentations drawn independently per patch:

``RandomResizedCrop(S, scale=(s, s), ratio=(1, 1))`` -> flip 0.5 -> ``ColorJitter(.4, .4, .4, .2)`` p 0.8
(the four ops in a random order per patch, as torchvision) -> grayscale 0.2 -> Gaussian blur p 0.1
(sigma ~ U(0.1, 2)) -> solarize p 0.1 (threshold 128/255) -> normalise (0.5, 0.5).

The colour ops are :mod:`.pixel_ops`, as in the device views. Differences from the PIL pipeline: crop + resize
is one bilinear ``grid_sample`` from float pixels (PIL resamples the 8-bit crop); blur is a separable Gaussian
of radius ``ceil(3 sigma_max)`` with reflect padding (PIL's ``GaussianBlur`` approximates it with box blurs), run
before the grayscale (they commute); results are not re-quantised to 8 bits between ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .pixel_ops import EAGER, blur_radius, chunks


def _rand(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=like.device if generator is None else generator.device).to(
        like.device)


@dataclass(frozen=True, kw_only=True)
class MultiPatchViews:
    """Settings of the EMP-SSL patch generator; call it on ``[B, C, H, W]`` images in [0, 1].

    ``crop_scale`` is the patch area as a fraction of the image (0.25: a 16x16 crop of a 32x32 image), resized
    to ``size``. Probabilities and ranges default to the official ``ContrastiveLearningViewGenerator``.
    """

    num_patches: int = 20
    size: int = 32
    crop_scale: float = 0.25
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.2)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.1
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.num_patches < 1 or self.size < 1:
            raise ValueError(f"num_patches and size must be >= 1, got {self.num_patches}, {self.size}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")

    def crops(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random square crops of ``crop_scale`` of the area, resized to ``size``, flipped with ``flip_p``."""
        b, c, h, w = images.shape
        n = self.num_patches * b
        side = int(round(math.sqrt(self.crop_scale * h * w)))
        ch, cw = min(side, h), min(side, w)
        top = torch.floor(_rand(n, images, generator) * (h - ch + 1))
        left = torch.floor(_rand(n, images, generator) * (w - cw + 1))
        flip = torch.where(_rand(n, images, generator) < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0] = cw / w * flip  # output x in [-1, 1] -> the crop's columns (mirrored when flipped)
        theta[:, 0, 2] = (2 * left + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * top + ch) / h - 1
        grid = F.affine_grid(theta, [n, c, self.size, self.size], align_corners=False)
        src = images.float().repeat(self.num_patches, 1, 1, 1)  # row i*B + b is image b
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> normalised patches ``[num_patches * B, C, size, size]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        with torch.autocast(images.device.type, enabled=False):  # pixel arithmetic stays fp32 under bf16 training
            return self._augment(images.float(), generator)

    def _augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = self.crops(images, generator)
        n = x.shape[0]
        jitter = _rand(n, x, generator) < self.jitter_p
        bri, con, sat, hue = self.jitter
        lo = torch.tensor([1 - bri, 1 - con, 1 - sat, -hue], device=x.device)
        hi = torch.tensor([1 + bri, 1 + con, 1 + sat, hue], device=x.device)
        factors = lo + (hi - lo) * torch.stack([_rand(n, x, generator) for _ in range(4)], dim=1)
        order = torch.argsort(torch.stack([_rand(n, x, generator) for _ in range(4)], dim=1), dim=1)
        gray = _rand(n, x, generator) < self.grayscale_p
        blur = _rand(n, x, generator) < self.blur_p
        s_lo, s_hi = self.blur_sigma
        sigma = s_lo + (s_hi - s_lo) * _rand(n, x, generator)
        solarize = _rand(n, x, generator) < self.solarize_p
        out = torch.empty_like(x)
        radius = blur_radius(s_hi, self.size)
        for rows in chunks(n, x[0]):  # on a CPU: rows that stay in cache
            EAGER.jitter_blur_finish(x[rows], out[rows], jitter=(factors[rows], order[rows], jitter[rows]),
                                     blur=(blur[rows], sigma[rows], radius), gray=gray[rows],
                                     solarize=solarize[rows], mean=self.mean, std=self.std)
        return out
