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


def _uniform(low_high: tuple[float, float], generator: torch.Generator | None) -> float:
    """``U(low, high)`` from ``generator`` (``low`` when the range is a point)."""
    low, high = low_high
    return low + (high - low) * float(torch.rand((), generator=generator))


def _pair(value: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """OpenMixup's ``to_2tuple``: a number ``v`` is the range ``(v, v)``."""
    return (value, value) if isinstance(value, (int, float)) else (value[0], value[1])


def grid_mask(
    height: int, width: int, lam: float, *, n_holes: int, hole_aspect_ratio: float, cut_area_ratio: float,
    cut_aspect_ratio: float, cy: float, cx: float,
) -> torch.Tensor:
    """GridMix's hole mask ``[H, W]`` (1 = the partner's pixels), as ``rand_grid`` in OpenMixup's
    ``openmixup/models/augments/gridmix.py``.

    A cut region of ``cut_area_ratio`` of the image with aspect ``cut_aspect_ratio`` is placed at the relative
    offset ``(cy, cx)`` in [0, 1); it is tiled by ``n_holes`` patches per row (``patch_w = ceil(cut_w / n_holes)``,
    ``patch_h = int(patch_w * hole_aspect_ratio)``), and each patch holds one hole of side ratio
    ``sqrt(1 - lam)`` at its top-left corner (at least 1 pixel, at most the patch side minus 1). The holes are cut
    with the official slicing, so a cut region taller or wider than the image (``cut_aspect_ratio`` far from 1
    with ``cut_area_ratio`` near 1) gives negative offsets that wrap or empty a slice exactly as there.

    Differs: the official code names ``size[2]`` "W" and ``size[3]`` "H" (it assumes square images); here each
    axis uses its own size, which is the same on square images.
    """
    cut_area = int(height * width * cut_area_ratio)
    cut_w = int(math.sqrt(cut_area / cut_aspect_ratio))
    cut_h = int(cut_w * cut_aspect_ratio)
    xc1, yc1 = int((width - cut_w) * cx), int((height - cut_h) * cy)
    if not 1 <= n_holes <= cut_w // 2:
        raise ValueError(f"GridMix n_holes must be in [1, {cut_w // 2}] for a {cut_w}-pixel-wide cut region, "
                         f"got {n_holes}")
    patch_w = math.ceil(cut_w / n_holes)
    patch_h = int(patch_w * hole_aspect_ratio)
    ny = math.ceil(cut_h / patch_h)
    ratio = math.sqrt(1.0 - lam)
    hole_w = min(max(int(patch_w * ratio), 1), patch_w - 1)
    hole_h = min(max(int(patch_h * ratio), 1), patch_h - 1)
    mask = torch.zeros(height, width)
    for i in range(n_holes + 1):
        for j in range(ny + 1):
            x1, y1 = min(patch_w * i, cut_w), min(patch_h * j, cut_h)
            x2, y2 = min(x1 + hole_w, cut_w), min(y1 + hole_h, cut_h)
            mask[yc1 + y1:yc1 + y2, xc1 + x1:xc1 + x2] = 1.0
    return mask


def gridmix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    lam: float,
    perm: torch.Tensor,
    n_holes: tuple[int, int] = (2, 6),
    hole_aspect_ratio: float | tuple[float, float] = 1.0,
    cut_area_ratio: float | tuple[float, float] = (0.5, 1.0),
    cut_aspect_ratio: float | tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> MixResult:
    """GridMix (Baek et al., Pattern Recognition 2021) as OpenMixup's ``gridmix.py``: a regular grid of holes
    through which ``x[perm]`` shows (:func:`grid_mask`); ``lam = 1 - holes / (H * W)``.

    Per call (one mask for the batch): ``n_holes`` uniform over the integers of its range, the three ratios
    uniform over theirs (defaults: OpenMixup's CIFAR and ImageNet configs), the cut offsets uniform in [0, 1).
    """
    _check(x, lam, perm)
    h, w = x.shape[-2:]
    lo, hi = _pair(n_holes)
    holes = int(torch.randint(int(lo), int(hi) + 1, (1,), generator=generator))
    hole_aspect = _uniform(_pair(hole_aspect_ratio), generator)
    area = _uniform(_pair(cut_area_ratio), generator)
    aspect = _uniform(_pair(cut_aspect_ratio), generator)
    cx, cy = float(torch.rand((), generator=generator)), float(torch.rand((), generator=generator))
    partner = grid_mask(h, w, lam, n_holes=holes, hole_aspect_ratio=hole_aspect, cut_area_ratio=area,
                        cut_aspect_ratio=aspect, cy=cy, cx=cx)
    return _mask_mix(x, y, perm, (1.0 - partner).to(x.device))


def smoothmix_kernel(height: int, width: int, *, shift_h: int, shift_w: int, sigma: float) -> torch.Tensor:
    """SmoothMix's partner weight ``[H, W]``, as ``gaussian_kernel`` in OpenMixup's ``smoothmix.py``.

    On a ``2H x 2W`` grid of coordinates rolled by ``(shift_h, shift_w)`` and cropped to its central ``H x W``, a
    Gaussian ``exp(-|p - c|^2 / (2 sigma^2))`` around the grid centre ``c = ((2H - 1) / 2, (2W - 1) / 2)``: a blob
    centred ``(shift_h, shift_w)`` away from the image centre whose far side wraps around the edges, as the roll
    does there. Differs: the official code builds a square ``2H x 2H`` grid (square images only); each axis uses
    its own size here, the same on square images.
    """
    s_h, s_w = 2 * height, 2 * width
    rows = (torch.arange(height) + s_h // 4 - shift_h) % s_h
    cols = (torch.arange(width) + s_w // 4 - shift_w) % s_w
    d2 = (rows[:, None].float() - (s_h - 1) / 2) ** 2 + (cols[None, :].float() - (s_w - 1) / 2) ** 2
    return torch.exp(-d2 / (2.0 * float(sigma) ** 2))


SMOOTHMIX_LAM = ("official", "own_share")


def smoothmix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    lam: float | None = None,
    perm: torch.Tensor,
    label_weight: str = "official",
    generator: torch.Generator | None = None,
) -> MixResult:
    """SmoothMix (Lee et al., CVPRW 2020) as OpenMixup's ``smoothmix.py``: ``x_mix = (1 - g) * x + g * x[perm]``
    for the Gaussian blob ``g`` of :func:`smoothmix_kernel`, with ``shift = U{0..W-1} - W/2``,
    ``U{0..H-1} - H/2`` and ``sigma ~ U(0.25, 0.5) * H``, independent of ``lam`` (which SmoothMix ignores).

    ``label_weight="official"`` returns OpenMixup's ``lam = mean(g)``, the *partner's* share, as the weight of
    ``y_a`` (the image's own label), so the labels are weighted inversely to the pixels; ``"own_share"`` returns
    ``1 - mean(g)``, the share of ``x`` in the mixture (the weighting the SmoothMix paper describes).
    """
    if label_weight not in SMOOTHMIX_LAM:
        raise ValueError(f"smoothmix label_weight must be one of {SMOOTHMIX_LAM}, got {label_weight!r}")
    _check(x, 0.5 if lam is None else lam, perm)
    h, w = x.shape[-2:]
    # Draw order as the official: the column shift, the row shift, then sigma.
    shift_w = int(int(torch.randint(0, w, (1,), generator=generator)) - w / 2)
    shift_h = int(int(torch.randint(0, h, (1,), generator=generator)) - h / 2)
    sigma = (float(torch.rand((), generator=generator)) / 4 + 0.25) * h
    partner = smoothmix_kernel(h, w, shift_h=shift_h, shift_w=shift_w, sigma=sigma).to(x.device)
    mixed = _mask_mix(x, y, perm, 1.0 - partner)
    return mixed if label_weight == "own_share" else mixed._replace(lam=float(partner.mean()))


def resizemix(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    perm: torch.Tensor,
    scope: tuple[float, float] = (0.1, 0.8),
    use_alpha: bool = True,
    alpha: float = 1.0,
    lam: float | None = None,
    tau: float | None = None,
    interpolation: str = "nearest",
    generator: torch.Generator | None = None,
) -> MixResult:
    """ResizeMix (Qin et al., 2020) as OpenMixup's ``resizemix.py``: the whole partner image, resized to a box of
    side ratio ``tau`` centred uniformly and clipped at the border, replaces that box;
    ``lam = 1 - box_area / (H * W)``.

    ``tau``: given; else ``clip(lam, scope)`` when ``lam`` is given; else ``Beta(alpha, alpha)`` redrawn as
    ``U(scope)`` when outside ``scope`` (``use_alpha=True``, OpenMixup's CIFAR and ImageNet configs) or ``U(scope)``
    (``use_alpha=False``, the ResizeMix paper). The box is ``[c - int(tau H) // 2, c + int(tau H) // 2)`` per axis,
    clipped, and the partner is resized with ``interpolation`` (``nearest`` as OpenMixup) to the clipped box.
    """
    if not 0.0 < scope[0] <= scope[1] < 1.0:
        raise ValueError(f"resizemix scope must satisfy 0 < low <= high < 1, got {scope}")
    _check(x, 0.5, perm)
    h, w = x.shape[-2:]
    if tau is None and lam is not None:
        tau = min(max(lam, scope[0]), scope[1])
    if tau is None and use_alpha:
        tau = sample_lam(alpha, generator=generator)
        if not scope[0] <= tau <= scope[1]:
            tau = None
    if tau is None:
        tau = _uniform(scope, generator)
    cut_h, cut_w = int(h * tau), int(w * tau)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x_mix = x.clone()
    if y2 > y1 and x2 > x1:
        x_mix[:, :, y1:y2, x1:x2] = torch.nn.functional.interpolate(x[perm], size=(y2 - y1, x2 - x1), mode=interpolation)
    return MixResult(x_mix, y, y[perm] if y is not None else None, 1.0 - (y2 - y1) * (x2 - x1) / (h * w))


def saliency_box(image: torch.Tensor, lam: float) -> tuple[int, int, int, int]:
    """SaliencyMix's box ``(y1, y2, x1, x2)`` for one image ``[C, H, W]``, as ``saliency_bbox`` in OpenMixup's
    ``saliencymix.py``: side ratio ``sqrt(1 - lam)``, centred on the peak of OpenCV's fine-grained static saliency
    map (Montabone & Soto 2010; computed on the normalised float32 image, as there, and quantised to uint8 before
    the argmax), clipped at the border. Needs ``opencv-contrib-python-headless`` (``pip install
    "hf_mixssl[saliency]"``), as the official code does.
    """
    try:
        from cv2.saliency import StaticSaliencyFineGrained_create
    except ImportError as err:
        raise ImportError('SaliencyMix uses OpenCV\'s fine-grained static saliency, as the official code: '
                          'pip install "hf_mixssl[saliency]" (opencv-contrib-python-headless)') from err
    h, w = image.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    ok, saliency = StaticSaliencyFineGrained_create().computeSaliency(
        image.detach().float().cpu().numpy().transpose(1, 2, 0))
    if not ok:
        raise RuntimeError("OpenCV's fine-grained saliency failed on this image")
    row, col = np.unravel_index(np.argmax((saliency * 255).astype("uint8"), axis=None), saliency.shape)
    row, col = int(row), int(col)
    return (max(row - cut_h // 2, 0), min(row + cut_h // 2, h), max(col - cut_w // 2, 0), min(col + cut_w // 2, w))


def saliencymix(
    x: torch.Tensor, y: torch.Tensor | None = None, *, lam: float, perm: torch.Tensor
) -> MixResult:
    """SaliencyMix (Uddin et al., ICLR 2021) as OpenMixup's ``saliencymix.py``: one box for the whole batch,
    centred on the saliency peak of the first sample's partner ``x[perm[0]]`` (:func:`saliency_box`), pasted from
    ``x[perm]``; ``lam = 1 - box_area / (H * W)``."""
    _check(x, lam, perm)
    return cutmix(x, y, lam=lam, perm=perm, box=saliency_box(x[perm[0]], lam))
