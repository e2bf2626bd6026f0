"""Pure loss functions for self-supervised and mixup training, with thin module wrappers.

Each function states its formula, paper and shapes; model files call these instead of inlining the math.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, *, tau: float) -> torch.Tensor:
    """MoCo v1/v2 InfoNCE against a queue of negatives (He et al., 2020, Eq. 1).

    ``logits = [q·k+, q·queueᵀ] / tau``, the positive at index 0, ``loss = CE(logits, 0)``.

    Args:
        q: ``[B, D]`` L2-normalised queries (with gradient).
        k: ``[B, D]`` L2-normalised positive keys (no gradient).
        queue: ``[K, D]`` L2-normalised negative keys.
        tau: temperature.

    Returns:
        Scalar mean loss over the batch.

    Similarities are computed in fp32 even under bf16 autocast: early in training positives and negatives
    differ by ~0.01 in cosine, below bf16's resolution at ``1/tau`` (0.06 at 10), which would erase the signal.
    """
    q, k, queue = q.float(), k.float(), queue.float()
    l_pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    l_neg = q @ queue.t()  # [B, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def contrastive_all_keys(
    q: torch.Tensor, k_all: torch.Tensor, *, tau: float, offset: int = 0
) -> torch.Tensor:
    """MoCo v3 contrastive loss over all-gathered keys (Chen, Xie, He, 2021, Alg. 1).

    ``loss = CE(q·k_allᵀ / tau, arange(B) + offset) * 2 * tau``; the ``2*tau`` factor is the official
    code's scaling that keeps gradients comparable across temperatures.

    Args:
        q: ``[B, D]`` queries of this rank (normalised here).
        k_all: ``[W*B, D]`` keys gathered from every rank (normalised here, no gradient).
        tau: temperature.
        offset: index of this rank's first positive in ``k_all`` (``rank * B``).
    """
    q = F.normalize(q.float(), dim=1)
    k_all = F.normalize(k_all.float(), dim=1)
    logits = q @ k_all.t() / tau
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * tau)


def unmix_terms(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    q_mix: torch.Tensor,
    key_sets: Sequence[torch.Tensor],
    *,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-Mix's mixture terms (Shen et al., AAAI 2022, official ``unmix_c10.py``).

    ``q_mix[i]`` embeds ``lam * x[i] + (1 - lam) * x[B-1-i]``; its reverse-order partner is the same batch of
    features flipped (no second forward): ``q_mix.flip(0)[i]`` holds ``x[i]`` with weight ``1 - lam``.

    ``loss_mix = sum_k lam * L(q_mix, k)`` and ``loss_mix_reverse = sum_k (1 - lam) * L(q_mix.flip(0), k)``
    over the key sets ``k`` (the other view's keys; both views' when the loss is symmetric).

    Args:
        loss_fn: the base contrastive loss ``L(q [B, D], k) -> scalar`` (queue or all-gather form).
        q_mix: ``[B, D]`` queries of the mixed batch.
        key_sets: keys to contrast against, each aligned with the unmixed batch order.
    """
    q_rev = q_mix.flip(0)
    loss_mix = sum(lam * loss_fn(q_mix, k) for k in key_sets)
    loss_rev = sum((1.0 - lam) * loss_fn(q_rev, k) for k in key_sets)
    return loss_mix, loss_rev


def mixed_cross_entropy(
    logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, *, lam: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mixup loss (Zhang et al., 2018): ``lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b)``.

    Args:
        logits: ``[B, C]``; y_a, y_b: ``[B]`` class indices of the two mixed partners; lam in [0, 1].
    """
    logits = logits.float()
    ce_a = F.cross_entropy(logits, y_a, label_smoothing=label_smoothing)
    ce_b = F.cross_entropy(logits, y_b, label_smoothing=label_smoothing)
    return lam * ce_a + (1.0 - lam) * ce_b


def total_coding_rate(z: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Total Coding Rate of ``b`` embeddings of dimension ``d`` (Ma et al. 2007; EMP-SSL, Tong et al. 2023).

    ``TCR(Z) = 1/2 logdet(I_d + d / (b eps) Zᵀ Z)`` for ``z: [b, d]`` (the official ``TotalCodingRate`` returns
    its negative as the loss). Computed in fp32 outside autocast through the smaller Gram matrix
    (``logdet(I_d + c ZᵀZ) = logdet(I_b + c Z Zᵀ)``, Sylvester) and a Cholesky factor: the matrix is the identity
    plus a PSD term, so it is positive definite and finite even for rank-deficient ``z``.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    with torch.autocast(z.device.type, enabled=False):
        z = z.float()
        b, d = z.shape
        gram = z @ z.t() if b <= d else z.t() @ z
        m = torch.eye(gram.shape[0], device=z.device) + (d / (b * eps)) * gram
        chol, info = torch.linalg.cholesky_ex(m)
        if bool(info.any()):  # cannot happen in exact arithmetic; fall back rather than return NaN
            return 0.5 * torch.linalg.slogdet(m)[1]
        return torch.log(torch.diagonal(chol)).sum()  # 1/2 * 2 * sum(log diag L)


def emp_ssl_terms(
    z: torch.Tensor, *, eps: float, gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMP-SSL's two terms for ``z: [n, B, d]`` (n patches of B images, L2-normalised embeddings).

    ``invariance = -1/n sum_i mean_b cos(z_ib, zbar_b)`` with ``zbar_b = 1/n sum_i z_ib`` (not detached), and
    ``tcr = -1/n sum_i TCR(Z_i)`` over each patch chunk ``Z_i: [B, d]``. The loss is
    ``invariance_weight * invariance + tcr_weight * tcr`` (200 and 1 in the paper).

    ``gather`` (an all-gather with gradient, e.g. :func:`hf_mixssl.distributed.gather_with_grad`) makes each
    ``Z_i`` the global batch across ranks, so TCR equals the single-device value at the same global batch;
    the invariance term is per image (all of an image's patches live on one rank), and DDP's gradient
    average over ranks turns the per-rank means into the global mean.
    """
    n = z.shape[0]
    mean = z.mean(dim=0, keepdim=True)
    invariance = -F.cosine_similarity(z.float(), mean.float().expand_as(z), dim=-1).mean()
    tcr = torch.stack([-total_coding_rate(gather(z[i]) if gather else z[i], eps=eps) for i in range(n)]).mean()
    return invariance, tcr
