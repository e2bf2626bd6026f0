"""Momentum (EMA) encoders: the update, its schedules, and the MoCo key queue.

The update is called by the training loop after each real optimizer step, never inside ``forward``,
so gradient accumulation micro-steps and evaluation passes leave the momentum encoder alone
(lightly's ``update_momentum`` / timm's ``ModelEmaV3`` pattern).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_anneal(progress: float, *, start: float, end: float) -> float:
    """``end + (start - end) * (1 + cos(pi * p)) / 2`` with ``p = progress`` clamped to [0, 1]: ``start`` at 0,
    ``end`` at 1 (the cosine of every schedule here: learning rates, momentum, AutoMix's mask-loss weight)."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * ((1.0 + math.cos(math.pi * p)) / 2.0)


def momentum_schedule(progress: float, *, base: float, final: float = 1.0, kind: str = "constant") -> float:
    """Momentum coefficient at ``progress = step / total_steps`` in ``[0, 1]``.

    ``constant``: ``m = base`` (MoCo v1/v2).
    ``cosine``: ``m = final - (final - base) * (1 + cos(pi * progress)) / 2`` (MoCo v3 / BYOL), which goes
    from ``base`` at the start to ``final`` at the end.
    """
    if kind == "constant":
        return base
    if kind == "cosine":
        return cosine_anneal(progress, start=base, end=final)
    raise ValueError(f"momentum schedule kind must be 'constant' or 'cosine', got {kind!r}")


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to serve as its momentum (key) encoder."""
    ema = copy.deepcopy(module)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_momentum(ema: nn.Module, online: nn.Module, *, m: float) -> None:
    """EMA of parameters only: ``ema = m * ema + (1 - m) * online`` (buffers are left alone).

    Uses one fused ``torch._foreach_lerp_`` call: ``lerp(ema, online, 1-m)`` equals the formula above.
    """
    ema_params = [p for p in ema.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    if len(ema_params) != len(online_params):
        raise ValueError("momentum and online modules have different parameter counts")
    torch._foreach_lerp_(ema_params, online_params, 1.0 - m)


class KeyQueue(nn.Module):
    """A FIFO queue of ``size`` L2-normalised keys of dimension ``dim`` (MoCo's dictionary).

    The queue and its write pointer are persistent buffers, so they are saved with the model and restored
    on resume. A batch that runs past the end wraps around, so ``size % batch`` need not be 0.
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue_size must be positive, got {size}")
        self.size = size
        self.register_buffer("queue", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    # Both run eagerly under torch.compile: inductor turned the snapshot into an alias of the buffer that the
    # in-place enqueue then overwrote before backward read it (measured: 15% wrong gradients, a silent failure).
    @torch.compiler.disable
    def snapshot(self) -> torch.Tensor:
        """A detached copy of the keys, for a loss whose backward runs after :meth:`enqueue`."""
        return self.queue.clone().detach()

    @torch.compiler.disable
    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys: [N, D]`` at the pointer (oldest entries are replaced), wrapping around."""
        keys = keys.detach().to(self.queue.dtype)
        n = keys.shape[0]
        if n > self.size:  # only the newest `size` keys can survive
            keys, n = keys[-self.size :], self.size
        idx = (self.ptr + torch.arange(n, device=keys.device)) % self.size
        self.queue[idx] = keys
        self.ptr.copy_((self.ptr + n) % self.size)
