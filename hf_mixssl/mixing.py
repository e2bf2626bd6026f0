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
    x_mix = x * lam + x[perm] * (1.0 - lam)
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
    x_mix[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
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
