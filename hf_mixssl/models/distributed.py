"""Distributed helpers that degrade to no-ops on one process.

Every helper takes its device from the tensors it is given (no ``.cuda()``) and works whether or not
``torch.distributed`` is initialised, so model code calls them unconditionally (lightly's ``dist.py``
pattern). Shuffle-BN follows MoCo (He et al., 2020, ``moco/builder.py``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x: [B, ...]`` from every rank into ``[W*B, ...]`` (rank order). No gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        stacked = torch.stack(grads)
        # Every rank computed a loss over all gathered slices: sum their contributions to ours.
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x: [B, ...]`` into ``[W*B, ...]`` keeping the gradient path to the local slice."""
    if world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


@torch.no_grad()
def batch_shuffle(
    x: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch across all ranks for shuffle-BN; returns ``(x_shuffled, idx_unshuffle)``.

    ``x: [B, ...]`` per rank. The permutation covers the gathered ``W*B`` samples, so each rank's
    BatchNorm sees samples from every rank and cannot cheat with intra-batch statistics. On one
    process the permutation is local (the single-GPU variant of the MoCo Colab). ``generator`` makes
    the permutation reproducible; without it rank 0 draws it and broadcasts it.
    """
    x_all = concat_all_gather(x)
    n = x_all.shape[0]
    if generator is not None:
        idx_shuffle = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    else:
        idx_shuffle = torch.randperm(n, device=x.device)
        if world_size() > 1:
            dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    b = x.shape[0]
    idx_this = idx_shuffle.view(world_size(), b)[rank()]
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on its outputs: ``x: [B, ...]`` -> this rank's original order."""
    x_all = concat_all_gather(x)
    b = x.shape[0]
    idx_this = idx_unshuffle.view(world_size(), b)[rank()]
    return x_all[idx_this]
