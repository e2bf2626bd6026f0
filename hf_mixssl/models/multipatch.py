"""EMP-SSL's multi-patch view generator, batched on tensors (on the GPU when the images are there).

The official generator (``dataset/aug.py``) runs one PIL pipeline per patch: 20-200 of them per image. Here
one call turns images ``[B, C, H, W]`` in [0, 1] into ``[n*B, C, S, S]`` patches, patch-major (row
``i*B + b`` is patch ``i`` of image ``b``, so ``.view(n, B, ...)`` gives the per-patch chunks), with the same
augmentations drawn independently per patch:

``RandomResizedCrop(S, scale=(s, s), ratio=(1, 1))`` -> flip 0.5 -> ``ColorJitter(.4, .4, .4, .2)`` p 0.8
(the four ops in a random order per patch, as torchvision) -> grayscale 0.2 -> Gaussian blur p 0.1
(sigma ~ U(0.1, 2)) -> solarize p 0.1 (threshold 128/255) -> normalise (0.5, 0.5).

Differences from the PIL pipeline: crop + resize is one bilinear ``grid_sample`` from float pixels (PIL
resamples the 8-bit crop); blur is a separable Gaussian of radius 3 sigma with reflect padding (PIL's
``GaussianBlur`` approximates it with box blurs); results are not re-quantised to 8 bits between ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _rand(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=like.device if generator is None else generator.device).to(
        like.device)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W] -> [N, 1, H, W]`` luma (a weighted sum of the channel planes)."""
    return (_GRAY[0] * x[:, 0] + _GRAY[1] * x[:, 1] + _GRAY[2] * x[:, 2]).unsqueeze(1)


def hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``[N, 3, H, W]`` RGB in [0, 1] by ``shift: [N]`` turns (torchvision's ``adjust_hue``).

    Value (max) and saturation (so also min) are unchanged by a hue rotation, so the HSV round trip reduces to:
    ``h6 = 6 * hue`` from the max channel, then channel ``c = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n_c + h6') mod 6`` and ``n = (5, 3, 1)`` for (R, G, B) (the closed-form HSV -> RGB).
    Works on contiguous channel planes: reductions across the channel dim of NCHW are slow on CPU.
    """
    r, g, b = (c.contiguous() for c in x.unbind(1))
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / torch.where(delta > 0, delta, torch.ones_like(delta))
    h6 = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h6 = h6 + 6.0 * shift.view(-1, 1, 1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - delta * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=1)


def _jitter_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    """One ColorJitter op with per-sample factors ``f: [N]`` (torchvision's tensor semantics)."""
    f4 = f.view(-1, 1, 1, 1)
    if op == 0:  # brightness: blend with black
        return (x * f4).clamp(0, 1)
    if op == 1:  # contrast: blend with the mean luma of the image
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return (f4 * x + (1 - f4) * mean).clamp(0, 1)
    if op == 2:  # saturation: blend with the luma
        return (f4 * x + (1 - f4) * grayscale(x)).clamp(0, 1)
    return hue_shift(x, f)


def color_jitter(
    x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor
) -> torch.Tensor:
    """Apply brightness/contrast/saturation/hue with per-sample ``factors [N, 4]`` in per-sample ``order [N, 4]``
    (a permutation of 0..3 per row). Each op runs once per sample, on the rows whose turn it is."""
    x = x.clone()
    for step in range(4):
        for op in range(4):
            idx = (order[:, step] == op).nonzero(as_tuple=True)[0]
            if idx.numel():
                x[idx] = _jitter_op(x[idx], op, factors[idx, op])
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with per-sample ``sigma: [N]`` (radius ``ceil(3 max sigma)``, reflect padding)."""
    n, c, h, w = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), min(h, w) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x.dtype)[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, 2r+1]
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


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
        jit = (_rand(n, x, generator) < self.jitter_p).nonzero(as_tuple=True)[0]
        if jit.numel():
            bri, con, sat, hue = self.jitter
            lo = torch.tensor([1 - bri, 1 - con, 1 - sat, -hue], device=x.device)
            hi = torch.tensor([1 + bri, 1 + con, 1 + sat, hue], device=x.device)
            u = torch.stack([_rand(jit.numel(), x, generator) for _ in range(4)], dim=1)
            order = torch.argsort(torch.stack([_rand(jit.numel(), x, generator) for _ in range(4)], dim=1), dim=1)
            x[jit] = color_jitter(x[jit], lo + (hi - lo) * u, order)
        gray = _rand(n, x, generator) < self.grayscale_p
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        blur = (_rand(n, x, generator) < self.blur_p).nonzero(as_tuple=True)[0]
        if blur.numel():
            s_lo, s_hi = self.blur_sigma
            x[blur] = gaussian_blur(x[blur], s_lo + (s_hi - s_lo) * _rand(blur.numel(), x, generator))
        sol = (_rand(n, x, generator) < self.solarize_p).view(-1, 1, 1, 1)
        x = torch.where(sol & (x >= 128 / 255), 1.0 - x, x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
