"""Pure, batched, seedable mixing functions.

Each mixer maps ``x: [B, C, H, W]`` (and optional labels ``y: [B]``) with one partner permutation
``perm: [B]`` to a :class:`MixResult` ``(x_mix, y_a, y_b, lam)``, where ``x_mix[i]`` mixes ``x[i]`` (weight
``lam``) with ``x[perm[i]]`` (weight ``1 - lam``), so the mixed loss is ``lam*L(y_a) + (1-lam)*L(y_b)``.
Randomness is explicit: pass ``lam``/``box`` or a ``torch.Generator`` (timm's old ``mixup.py`` drew from the
global NumPy state; resumed runs could not reproduce it).

Papers: Mixup (Zhang et al., ICLR 2018); CutMix (Yun et al., ICCV 2019); Un-Mix (Shen et al., AAAI 2022)
mixes a batch with its reversed copy (``perm = flip``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch


class MixResult(NamedTuple):
    x: torch.Tensor
    y_a: torch.Tensor | None
    y_b: torch.Tensor | None
    lam: float


def sample_lam(alpha: float, *, generator: torch.Generator | None = None) -> float:
    """``lam ~ Beta(alpha, alpha)``; reproducible under ``generator`` (or torch's global RNG)."""
    if not alpha > 0:
        raise ValueError(f"mix alpha must be > 0, got {alpha!r}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def reverse_perm(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The partner permutation of Un-Mix: sample ``i`` mixes with sample ``B-1-i``."""
    return torch.arange(batch_size - 1, -1, -1, device=device)


def _check(x: torch.Tensor, lam: float, perm: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"mixing expects images [B, C, H, W], got shape {tuple(x.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    if perm.shape != (x.shape[0],):
        raise ValueError(f"perm must have shape [{x.shape[0]}], got {tuple(perm.shape)}")


def mixup(x: torch.Tensor, y: torch.Tensor | None = None, *, lam: float, perm: torch.Tensor) -> MixResult:
    """Global mixup: ``x_mix = lam * x + (1 - lam) * x[perm]``."""
    _check(x, lam, perm)
    x_mix = x[perm].lerp_(x, lam)  # x[perm] + lam * (x - x[perm]): one gather, one fused in-place pass
    return MixResult(x_mix, y, y[perm] if y is not None else None, lam)


def rand_bbox(
    height: int, width: int, lam: float, *, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """CutMix box ``(y1, y2, x1, x2)`` covering about ``1 - lam`` of the image (clipped at the borders).

    Side ratio ``sqrt(1 - lam)``, centre uniform over the image (Yun et al., 2019).
    """
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y1, y2, x1, x2


def cutmix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    lam: float,
    perm: torch.Tensor,
    box: tuple[int, int, int, int] | None = None,
    generator: torch.Generator | None = None,
) -> MixResult:
    """CutMix: paste the box ``(y1, y2, x1, x2)`` of ``x[perm]`` into ``x``.

    The returned ``lam`` is recomputed from the box actually pasted: ``1 - box_area / (H * W)``.
    """
    _check(x, lam, perm)
    h, w = x.shape[-2:]
    y1, y2, x1, x2 = box if box is not None else rand_bbox(h, w, lam, generator=generator)
    x_mix = x.clone()
    x_mix[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]  # gather only the box, not the whole partner batch
    lam_box = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return MixResult(x_mix, y, y[perm] if y is not None else None, lam_box)


def unmix_images(
    x: torch.Tensor,
    *,
    beta: float = 1.0,
    global_prob: float = 0.5,
    lam: float | None = None,
    mode: str | None = None,
    box: tuple[int, int, int, int] | None = None,
    generator: torch.Generator | None = None,
) -> MixResult:
    """Un-Mix's image mixture of a batch with its reversed copy (Shen et al., AAAI 2022).

    ``lam ~ Beta(beta, beta)``; with probability ``global_prob`` a global mixup ``lam*x + (1-lam)*x.flip(0)``,
    otherwise a CutMix box from ``x.flip(0)`` with ``lam`` recomputed from the box area. ``lam``, ``mode``
    (``"global"`` or ``"region"``) and ``box`` may be given to fix the draw.
    """
    if mode is None:
        mode = "global" if float(torch.rand((), generator=generator)) < global_prob else "region"
    if mode not in ("global", "region"):
        raise ValueError(f"Un-Mix mode must be 'global' or 'region', got {mode!r}")
    if lam is None:
        lam = sample_lam(beta, generator=generator)
    perm = reverse_perm(x.shape[0], x.device)
    if mode == "global":
        return mixup(x, lam=lam, perm=perm)
    return cutmix(x, lam=lam, perm=perm, box=box, generator=generator)


# ------------------------------------------------------------------------------------ mask-based mixers
def _mask_mix(x: torch.Tensor, y: torch.Tensor | None, perm: torch.Tensor, keep: torch.Tensor) -> MixResult:
    """``x_mix = keep * x + (1 - keep) * x[perm]`` for a mask ``keep: [H, W]`` or ``[B, 1, H, W]`` in [0, 1].

    ``lam`` is the mean of ``keep``: the share of the result that comes from ``x``.
    """
    keep = keep.to(x.dtype)
    if keep.ndim == 2:
        keep = keep[None, None]
    x_mix = keep * x + (1.0 - keep) * x[perm]
    return MixResult(x_mix, y, y[perm] if y is not None else None, float(keep.mean()))


def fmix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    lam: float,
    perm: torch.Tensor,
    decay_power: float = 3.0,
    generator: torch.Generator | None = None,
) -> MixResult:
    """FMix (Harris et al., 2020): a binary mask from low-frequency noise.

    Random complex Fourier coefficients are scaled by ``1 / f^decay_power`` and inverted to a real image;
    its top ``round(lam * H * W)`` pixels keep ``x``, the rest come from ``x[perm]``.
    """
    _check(x, lam, perm)
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freq = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
    scale = 1.0 / freq**decay_power
    spectrum = torch.complex(torch.randn(scale.shape, generator=generator), torch.randn(scale.shape, generator=generator))
    grey = torch.fft.irfft2(spectrum * scale, s=(h, w))
    n_keep = int(round(lam * h * w))
    keep = torch.zeros(h * w)
    keep[grey.flatten().argsort(descending=True)[:n_keep]] = 1.0
    return _mask_mix(x, y, perm, keep.view(h, w).to(x.device))


def gridmix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    lam: float,
    perm: torch.Tensor,
    grid: int | None = None,
    generator: torch.Generator | None = None,
) -> MixResult:
    """GridMix (Baek et al., 2021): a ``grid x grid`` board whose cells each come from ``x[perm]`` with
    probability ``1 - lam`` (``grid`` uniform in [2, 6] when not given); ``lam`` is recomputed from the cells."""
    _check(x, lam, perm)
    h, w = x.shape[-2:]
    g = grid if grid is not None else int(torch.randint(2, 7, (1,), generator=generator))
    if g < 1:
        raise ValueError(f"grid must be >= 1, got {g}")
    cells = (torch.rand(g, g, generator=generator) < lam).float()
    keep = torch.nn.functional.interpolate(cells[None, None], size=(h, w), mode="nearest")[0, 0]
    return _mask_mix(x, y, perm, keep.to(x.device))


def smoothmix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    lam: float,
    perm: torch.Tensor,
    generator: torch.Generator | None = None,
) -> MixResult:
    """SmoothMix (Lee et al., 2020): a Gaussian blob of ``x[perm]`` with soft edges pasted into ``x``.

    The blob ``exp(-d^2 / (2 sigma^2))`` is centred uniformly; ``sigma`` is chosen so that the blob covers
    about ``1 - lam`` of the image (``pi * 2 sigma^2 = (1 - lam) * H * W``); ``lam`` is recomputed from it.
    """
    _check(x, lam, perm)
    h, w = x.shape[-2:]
    cy = float(torch.randint(0, h, (1,), generator=generator))
    cx = float(torch.randint(0, w, (1,), generator=generator))
    sigma = math.sqrt(max(1.0 - lam, 1e-6) * h * w / (2.0 * math.pi))
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))
    return _mask_mix(x, y, perm, (1.0 - blob).to(x.device))


def resizemix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    perm: torch.Tensor,
    scope: tuple[float, float] = (0.1, 0.8),
    tau: float | None = None,
    generator: torch.Generator | None = None,
) -> MixResult:
    """ResizeMix (Qin et al., 2020): the whole partner image, resized by ``tau ~ U(scope)``, pasted at a
    random location; ``lam = 1 - pasted_area / (H * W)`` (about ``1 - tau^2``)."""
    if not 0.0 < scope[0] <= scope[1] < 1.0:
        raise ValueError(f"resizemix scope must satisfy 0 < low <= high < 1, got {scope}")
    h, w = x.shape[-2:]
    if tau is None:
        tau = scope[0] + (scope[1] - scope[0]) * float(torch.rand((), generator=generator))
    ph, pw = max(1, int(round(h * tau))), max(1, int(round(w * tau)))
    _check(x, 0.5, perm)
    y1 = int(torch.randint(0, h - ph + 1, (1,), generator=generator))
    x1 = int(torch.randint(0, w - pw + 1, (1,), generator=generator))
    small = torch.nn.functional.interpolate(x[perm], size=(ph, pw), mode="bilinear", align_corners=False)
    x_mix = x.clone()
    x_mix[:, :, y1:y1 + ph, x1:x1 + pw] = small
    return MixResult(x_mix, y, y[perm] if y is not None else None, 1.0 - ph * pw / (h * w))


def spectral_saliency(x: torch.Tensor) -> torch.Tensor:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007) of images ``[B, C, H, W]`` -> ``[B, H, W]``.

    The log-amplitude spectrum minus its 3x3 local mean, recombined with the phase, inverted and squared,
    then smoothed: the torch counterpart of OpenCV's ``StaticSaliencySpectralResidual`` used by SaliencyMix.
    """
    grey = x.float().mean(dim=1)
    spec = torch.fft.fft2(grey)
    log_amp = torch.log(spec.abs() + 1e-8)
    residual = log_amp - torch.nn.functional.avg_pool2d(log_amp[:, None], 3, stride=1, padding=1,
                                                        count_include_pad=False)[:, 0]
    sal = torch.fft.ifft2(torch.exp(residual + 1j * torch.angle(spec))).abs() ** 2
    return torch.nn.functional.avg_pool2d(sal[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]


def saliencymix(
    x: torch.Tensor, y: torch.Tensor | None = None, *, lam: float, perm: torch.Tensor
) -> MixResult:
    """SaliencyMix (Uddin et al., ICLR 2021): a CutMix box centred on the partner's most salient pixel.

    Box side ratio ``sqrt(1 - lam)`` as in CutMix; each sample takes the box around its own partner's peak
    (per-sample boxes), and ``lam`` is the mean kept share over the batch.
    """
    _check(x, lam, perm)
    b, _, h, w = x.shape
    sal = spectral_saliency(x[perm]).flatten(1)
    peak = sal.argmax(dim=1)
    cy, cx = peak // w, peak % w
    cut = math.sqrt(1.0 - lam)
    half_h, half_w = int(h * cut) // 2, int(w * cut) // 2
    yy = torch.arange(h, device=x.device)[None, :, None]
    xx = torch.arange(w, device=x.device)[None, None, :]
    inside = ((yy >= (cy - half_h).clamp_min(0)[:, None, None]) & (yy < (cy + half_h).clamp_max(h)[:, None, None])
              & (xx >= (cx - half_w).clamp_min(0)[:, None, None]) & (xx < (cx + half_w).clamp_max(w)[:, None, None]))
    return _mask_mix(x, y, perm, (~inside).float()[:, None])
