"""Pictures of what a method does to its inputs: views, mixed samples, AutoMix masks.

Grids are de-normalised with the run's own mean/std (OpenMixup plotted normalised tensors, which shows wrong
colours); the training loop writes them (``hf_mixssl.train.pictures``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Invert ``Normalize(mean, std)``: ``x * std + mean``, clamped to [0, 1]. ``x: [N, C, H, W]``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def image_grid(rows: Sequence[torch.Tensor], *, pad: int = 2) -> torch.Tensor:
    """Stack rows of images ``[N, C, H, W]`` in [0, 1] (1-channel rows become grey) into one ``[3, H', W']``."""
    rows = [r.detach().float().cpu() for r in rows]
    rows = [r.expand(-1, 3, -1, -1) if r.shape[1] == 1 else r for r in rows]
    n, _, h, w = rows[0].shape
    grid = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y:y + h, x:x + w] = img
    return grid
