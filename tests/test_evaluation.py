"""The linear probe and the top-k metric module."""

import pytest
import torch

from hf_mixssl.evaluation.probes import PROBES, probe_with, train_cached_probe
from hf_mixssl.evaluation.protocols import load_metric, topk_accuracies


def train_linear_probe(x, y, *, num_classes, epochs=100, seed=0):
    return train_cached_probe(probe_with(PROBES["quick"], epochs=epochs), x, y, num_classes=num_classes, seed=seed)


def blobs(n=3000, d=32, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + 2 * torch.randn(n, d, generator=g) + 7.0, y  # offset: the probe's BN standardises


def test_linear_probe_separates_clusters_and_not_noise():
    x, y = blobs()
    head = train_linear_probe(x[:2000], y[:2000], num_classes=10, epochs=10)
    assert topk_accuracies(head(x[2000:]), y[2000:])["top1"] > 0.95
    shuffled = y[torch.randperm(3000, generator=torch.Generator().manual_seed(1))]
    head = train_linear_probe(x[:2000], shuffled[:2000], num_classes=10, epochs=10)
    assert topk_accuracies(head(x[2000:]), shuffled[2000:])["top1"] < 0.2  # chance is 0.1


def test_linear_probe_is_deterministic_and_frozen_bn():
    x, y = blobs(600)
    a = train_linear_probe(x, y, num_classes=10, epochs=2, seed=3)
    b = train_linear_probe(x, y, num_classes=10, epochs=2, seed=3)
    assert torch.equal(a[1].weight, b[1].weight)
    assert not a[0].affine and not a.training
    with pytest.raises(ValueError, match="label"):
        train_linear_probe(x, torch.full_like(y, -1), num_classes=10)


def test_topk_accuracies_match_a_hand_count():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4], [0.8, 0.1, 0.05, 0.0, 0.3, 0.2], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    labels = torch.tensor([1, 4, 0])
    # sample 0 top-1 right; sample 1 label 4 is 2nd; sample 2 label 0 is last (6th)
    assert topk_accuracies(logits, labels) == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    assert topk_accuracies(logits[:, :3], torch.tensor([1, 0, 0])) == {"top1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="k=5"):
        load_metric("top_k_accuracy").compute(predictions=[[0, 1]], references=[0], k=5)
