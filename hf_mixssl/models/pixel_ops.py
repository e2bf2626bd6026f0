"""Batched pixel ops with per-row parameters, on planar float images ``x [N, 3, H, W]`` in [0, 1].

The device half of every view recipe (:mod:`hf_mixssl.data.device_views`) and EMP-SSL's patch generator
(:mod:`.multipatch`) are built from these. Each op is a pure tensor function written for fusion: per-row
parameters broadcast over the planes, no data-dependent Python control flow inside an op, contiguous channel
planes (a reduction across the channel dim of NCHW is slow on a CPU). Ops that apply to few rows and cost many
flops a pixel (hue, blur) run only on the rows that draw them (gathered and written back whole); the cheap
blends run on every row, with identity parameters where they do not apply.

:data:`EAGER` runs them as they are; :func:`compiled` returns the same functions through ``torch.compile``, where
each op becomes one or two fused loops over the planes (the device views on a CPU: see the README's Benchmarks).

Conventions shared with PIL and the official pipelines: luma ``0.299 R + 0.587 G + 0.114 B`` (PIL's ``convert("L")``;
torchvision's tensor ops weigh R 0.2989), solarize at 128/255 (``ImageOps.solarize``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def _col(v: torch.Tensor) -> torch.Tensor:
    """Per-row values ``[N]`` -> ``[N, 1, 1, 1]`` to broadcast over the planes."""
    return v.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W] -> [N, 1, H, W]`` luma (a weighted sum of the channel planes)."""
    return (LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]).unsqueeze(1)


def to_planes(u8: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Decoded crops ``uint8 [N, H, W, 3]`` -> planar float ``[N, 3, H, W]`` in [0, 1], rows with ``flip`` mirrored."""
    # contiguous planes: a plain .float() would keep the permuted (channels-last) strides, and every later op with it
    x = u8.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format) / 255.0
    return torch.where(_col(flip), x.flip(-1), x)


def set_gray(x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """Rows with ``on`` -> their luma in all three channels (``RandomGrayscale``'s 3-channel output)."""
    return torch.where(_col(on), grayscale(x).expand_as(x), x)


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W] -> [N, 3]`` mean of each channel plane (the mean luma is their ``LUMA``-weighted sum)."""
    return x.mean(dim=(2, 3))


def blend_step(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor,
               means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``ColorJitter`` step on every row: ``op [N]`` is 0 brightness, 1 contrast, 2 saturation, anything else
    leaves the row as it is; ``factors [N, 4]`` the row's (brightness, contrast, saturation, hue); ``means [N, 3]``
    the rows' :func:`channel_means`. Returns the new rows and their channel means.

    The three ops are torchvision's blends ``clamp(f x + (1 - f) y)`` with ``y`` black, the image's mean luma, or
    the pixel's luma, so one formula does all rows: ``clamp(a x + b luma + c)`` with ``(a, b, c) = (f, 0, 0)``,
    ``(f, 0, (1 - f) mean luma)``, ``(f, 1 - f, 0)``. Returning the output's channel means (a reduction over the
    loop that writes it) saves the next contrast its own pass over the image.
    """
    f = factors[:, :3].gather(1, op.clamp(0, 2).long().view(-1, 1)).view(-1)
    blends = (op >= 0) & (op <= 2)
    mean_luma = means @ torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    a = torch.where(blends, f, 1.0)
    b = torch.where(op == 2, 1.0 - f, 0.0)
    c = torch.where(op == 1, (1.0 - f) * mean_luma, 0.0)
    # (a, b, c) = (1, 0, 0) leaves a row exactly as it is (x is in [0, 1]): no select needed. In-place adds: the
    # fastest eager form measured (compiled, every form is one loop).
    y = x * _col(a)
    y += _col(c)
    y += _col(b) * grayscale(x)
    return y.clamp_(0.0, 1.0), channel_means(y)


def hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of every row by ``shift [N]`` turns (torchvision's ``adjust_hue``).

    Value (max) and saturation (so also min) are unchanged by a hue rotation, so the HSV round trip reduces to:
    ``h6 = 6 * hue`` from the max channel, then channel ``c = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n_c + h6') mod 6`` and ``n = (5, 3, 1)`` for (R, G, B) (the closed-form HSV -> RGB).
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / torch.where(delta > 0, delta, 1.0)
    h6 = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h6 = h6 + 6.0 * shift.view(-1, 1, 1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = h6 + n
        k = k - 6.0 * torch.floor(k * (1.0 / 6.0))  # k mod 6: compiled, 4x faster than torch.remainder's division
        out.append(maxc - delta * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def hue_step(x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hue_shift` and the output's :func:`channel_means` (what a later contrast blends with), in one pass."""
    y = hue_shift(x, shift)
    return y, channel_means(y)


def blur_radius(sigma_max: float, size: int) -> int:
    """Kernel radius ``ceil(3 sigma_max)`` of a recipe's largest sigma (reflect padding needs it below ``size``).

    One radius for every row, fixed by the recipe: a row's blur does not depend on the other rows of its batch;
    a smaller sigma's weights beyond ``3 sigma`` are below ``exp(-4.5)`` of the centre."""
    return max(1, min(math.ceil(3 * sigma_max), size - 1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of every row with its own ``sigma [N]``, taps ``-radius..radius``, reflect padding.

    Compiled, as ``2 radius + 1`` shifted multiply-adds per direction over a reflect-padded copy (contiguous
    slices: one vectorised loop per direction, 2.4x faster on a CPU than the grouped convolution compiled); eager,
    as two grouped convolutions (one kernel each, where the shifted adds would launch ~50)."""
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x.dtype)[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, 2r+1]
    planes = x.reshape(n * c, h, w)
    if not torch.compiler.is_compiling():
        y = F.pad(planes[None], (radius, radius, radius, radius), mode="reflect")
        y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
        return F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)

    def along(y: torch.Tensor, dim: int) -> torch.Tensor:
        size = y.shape[dim]
        padded = torch.cat([y.narrow(dim, 1, radius).flip(dim), y,
                            y.narrow(dim, size - 1 - radius, radius).flip(dim)], dim)
        out = k[:, 0, None, None] * padded.narrow(dim, 0, size)
        for j in range(1, 2 * radius + 1):
            out = out + k[:, j, None, None] * padded.narrow(dim, j, size)
        return out

    return along(along(planes, 2), 1).view(n, c, h, w)


def gray_solarize_normalize(x: torch.Tensor, gray: torch.Tensor, solarize: torch.Tensor, mean: Sequence[float],
                            std: Sequence[float], out: torch.Tensor) -> None:
    """The last pass, written into ``out`` (compiled: by the loop itself, no extra copy): rows with ``gray`` to
    their luma (:func:`set_gray`), then rows with ``solarize`` inverted at and above 128/255 (PIL's
    ``ImageOps.solarize(threshold=128)``), then ``(x - mean) / std`` per channel."""
    x = set_gray(x, gray)
    x = torch.where(_col(solarize) & (x >= 128 / 255), 1.0 - x, x)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    out.copy_((x - m) / s)


def on_rows(fn: Callable[..., torch.Tensor], x: torch.Tensor, rows: torch.Tensor, *row_args: torch.Tensor,
            **kwargs) -> torch.Tensor:
    """``fn`` on the rows of ``x`` where ``rows`` is true (in place), with the matching rows of ``row_args``."""
    idx = rows.nonzero(as_tuple=True)[0]
    if idx.numel() == len(x):
        return fn(x, *row_args, **kwargs)
    if idx.numel():  # index_select/index_copy_: whole-row copies, about 1.6x faster than x[idx] = ... on a CPU
        x.index_copy_(0, idx, fn(x.index_select(0, idx), *(a[idx] for a in row_args), **kwargs))
    return x


# Rows per pass on a CPU: about 4 MiB of float planes stay in cache between the ops (224 px device views: the whole
# batch at once was 1.4x slower, each op streaming it through memory). On other devices: every row at once.
CPU_CHUNK_BYTES = 4 << 20


def chunks(n: int, row: torch.Tensor) -> list[slice]:
    """The row slices of ``n`` rows like ``row`` (one image ``[3, H, W]``) to run the ops on, one after another."""
    step = n if row.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // (row.numel() * row.element_size()))
    return [slice(i, i + step) for i in range(0, n, step)]


@dataclass(frozen=True)
class Kernels:
    """The ops as called by the pipelines: eager (:data:`EAGER`) or compiled (:func:`compiled`)."""

    to_planes: Callable = to_planes
    set_gray: Callable = set_gray
    channel_means: Callable = channel_means
    blend_step: Callable = blend_step
    hue_step: Callable = hue_step
    gaussian_blur: Callable = gaussian_blur
    gray_solarize_normalize: Callable = gray_solarize_normalize

    def color_jitter(self, x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                     on: torch.Tensor) -> torch.Tensor:
        """``ColorJitter`` on the rows with ``on``: factors ``[N, 4]`` (brightness, contrast, saturation, hue), the
        four ops in each row's own ``order [N, 4]`` (a permutation of 0..3, as torchvision draws it)."""
        means = self.channel_means(x)
        for step in range(4):
            op = torch.where(on, order[:, step], -1)
            x, means = self.blend_step(x, op, factors, means)
            rows = (op == 3).nonzero(as_tuple=True)[0]
            if rows.numel():
                y, y_means = self.hue_step(x.index_select(0, rows), factors[rows, 3])
                x.index_copy_(0, rows, y)
                means[rows] = y_means
        return x

    def jitter_blur_finish(self, x: torch.Tensor, out: torch.Tensor, *, jitter: tuple | None,
                           blur: tuple | None, gray: torch.Tensor, solarize: torch.Tensor, mean: Sequence[float],
                           std: Sequence[float]) -> None:
        """The view ops after the crop (and any grayscale that comes first), in their order, written into ``out``:
        ``jitter = (factors, order, on)`` for :meth:`color_jitter`, ``blur = (on, sigma, radius)`` for
        :func:`gaussian_blur` on the rows with ``on`` (``None``: the op is not in the recipe), then
        :func:`gray_solarize_normalize`. The blur runs before the grayscale: both are linear and the same per
        channel, so they commute (to float rounding), and grayscale, solarize and normalisation share one pass."""
        if jitter is not None:
            x = self.color_jitter(x, *jitter)
        if blur is not None:
            on, sigma, radius = blur
            x = on_rows(self.gaussian_blur, x, on, sigma, radius=radius)
        self.gray_solarize_normalize(x, gray, solarize, mean, std, out)


EAGER = Kernels()


@functools.cache
def compiled() -> Kernels:
    """:class:`Kernels` through ``torch.compile`` (compiled on first use per shape; hue and blur row counts vary,
    so after the first recompile their row dimension is dynamic)."""
    return Kernels(**{f.name: torch.compile(getattr(EAGER, f.name)) for f in fields(Kernels)})
