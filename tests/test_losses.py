import math

import pytest
import torch
import torch.nn.functional as F

from hf_mixssl.models.losses import contrastive_all_keys, info_nce_queue


def _reference_info_nce(q, k, queue, tau):
    """Loop-by-loop reference of MoCo's Eq. 1."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ n) / tau) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


class TestInfoNCEQueue:
    def test_matches_hand_reference(self):
        g = torch.Generator().manual_seed(0)
        q = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
        k = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
        queue = F.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1)
        got = info_nce_queue(q, k, queue, tau=0.2)
        assert got.item() == pytest.approx(_reference_info_nce(q, k, queue, 0.2), rel=1e-6)  # logits are computed in fp32

    def test_closed_form_orthogonal_negatives(self):
        # q == k and every negative orthogonal: loss = -log(e^{1/t} / (e^{1/t} + K))
        q = torch.eye(4)[:2]
        queue = torch.eye(4)[2:].repeat(3, 1)  # K = 6 orthogonal negatives
        tau = 0.5
        expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 6))
        assert info_nce_queue(q, q, queue, tau=tau).item() == pytest.approx(expected, rel=1e-6)

    def test_gradient_only_through_q(self):
        q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
        k = F.normalize(torch.randn(3, 4), dim=1)
        info_nce_queue(q, k, F.normalize(torch.randn(5, 4), dim=1), tau=0.1).backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()


class TestContrastiveAllKeys:
    def test_matches_reference_with_offset(self):
        g = torch.Generator().manual_seed(1)
        q = torch.randn(3, 6, generator=g, dtype=torch.float64)
        k_all = torch.randn(6, 6, generator=g, dtype=torch.float64)  # two "ranks" of 3
        tau, offset = 0.2, 3
        qn, kn = F.normalize(q, dim=1), F.normalize(k_all, dim=1)
        ref = 0.0
        for i in range(3):
            logits = [float(qn[i] @ kn[j]) / tau for j in range(6)]
            ref += -(logits[i + offset] - math.log(sum(math.exp(x) for x in logits)))
        ref = ref / 3 * 2 * tau
        got = contrastive_all_keys(q.float(), k_all.float(), tau=tau, offset=offset)
        assert got.item() == pytest.approx(ref, rel=1e-5)

    def test_perfect_alignment_closed_form(self):
        # Orthonormal keys and q == k: loss = 2t * -log(e^{1/t} / (e^{1/t} + (N-1)))
        q = torch.eye(4)
        tau = 0.5
        expected = 2 * tau * -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 3))
        assert contrastive_all_keys(q, q, tau=tau).item() == pytest.approx(expected, rel=1e-6)
