"""MAE's pure pieces: patchify/unpatchify, per-sample random masking, fixed 2-D sin-cos position embeddings,
and the masked reconstruction loss (He et al. 2021, ``models_mae.py`` / ``util/pos_embed.py``).

Shapes: images ``[B, C, H, W]``, patch size ``p``, ``N = (H/p)(W/p)`` patches of ``D = p*p*C`` values each,
ordered row-major over the patch grid with each patch flattened as ``(p_row, p_col, channel)``.
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p*p*C]`` (H and W divisible by ``p``)."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, *, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``[B, N, p*p*C] -> [B, C, H, W]``, the inverse of :func:`patchify` (square grid unless ``grid``)."""
    b, n, d = patches.shape
    p = patch_size
    gh, gw = grid or (int(round(n**0.5)),) * 2
    c = d // (p * p)
    if gh * gw != n or c * p * p != d:
        raise ValueError(f"cannot unpatchify {n} patches of {d} values with patch_size {p} and grid {(gh, gw)}")
    x = patches.reshape(b, gh, gw, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, gh * p, gw * p)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches each sample keeps: ``int(N * (1 - mask_ratio))`` as ``models_mae.py``'s ``len_keep`` (truncated:
    49 patches at 0.6 keep 19), and at least one where that would keep none (the official code would fail)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def random_masking(
    tokens: torch.Tensor,
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise.

    ``tokens: [B, N, D]`` -> ``(visible [B, L, D], mask [B, N], ids_restore [B, N])`` with
    ``L = int(N (1 - mask_ratio))``; ``mask`` is 1 for removed patches, in the original patch order;
    ``ids_restore`` un-shuffles: ``torch.gather(shuffled, 1, ids_restore)`` is the original order. The ``L``
    patches with the smallest noise are kept, so passing ``noise`` fixes the mask.
    """
    b, n, d = tokens.shape
    keep = num_visible(n, mask_ratio)
    if noise is None:
        noise = torch.rand(b, n, generator=generator, device="cpu" if generator is not None else tokens.device)
    noise = noise.to(tokens.device)
    if noise.shape != (b, n):
        raise ValueError(f"noise must have shape {(b, n)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, n, device=tokens.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, mask, ids_restore


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[M] -> [M, dim]``: ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.to(torch.float64).reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], *, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``[(1 if cls_token) + gh*gw, dim]`` (float32), as MAE's numpy code.

    Half the channels encode the column (``w``) coordinate and half the row (``h``), in that order; the class
    token's row is zeros.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be divisible by 4, got {dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def patch_targets(images: torch.Tensor, patch_size: int, *, norm_pix: bool) -> torch.Tensor:
    """Reconstruction targets ``[B, N, p*p*C]``; with ``norm_pix`` each patch is ``(t - mean) / sqrt(var + 1e-6)``."""
    target = patchify(images, patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return target


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches of the per-patch MSE: ``sum_n mask_n mean_d (pred - target)^2 / sum_n mask_n``."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
