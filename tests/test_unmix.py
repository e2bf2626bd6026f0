"""Un-Mix on MoCo: the official formula, the flip trick, and the queue contract."""

import copy

import pytest
import torch
import torch.nn.functional as F

from hf_mixssl import MoCoConfig, MoCoModel
from hf_mixssl.models.backbones import pooled_features


def model(version=2, symmetric=False, **kw):
    torch.manual_seed(0)
    cfg = MoCoConfig(version=version, backbone="test_resnet", cifar_stem=True, image_size=32, queue_size=64,
                     proj_dim=16, proj_hidden_dim=0 if version < 3 else 32, pred_hidden_dim=32, tau=0.2,
                     symmetric=symmetric, unmix=True, **kw)
    return MoCoModel(cfg)


def views(b=8):
    return torch.randn(b, 2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def official_loss(m, x1, x2, mixed, lam, symmetric):
    """`unmix_c10.py`'s ModelMoCo.contrastive_loss / forward, written out with einsum (eval mode, no shuffle)."""
    queue = m.queue.queue.t()  # official layout: [D, K]
    enc_q = lambda x: m.projector(pooled_features(m.backbone, x))  # noqa: E731
    enc_k = lambda x: m.projector_k(pooled_features(m.backbone_k, x))  # noqa: E731

    def contrastive(im_q, im_k):
        q = F.normalize(enc_q(im_q), dim=1)
        q_m = enc_q(mixed)
        q_m_flip = F.normalize(torch.flip(q_m, (0,)), dim=1)
        q_m = F.normalize(q_m, dim=1)
        k = F.normalize(enc_k(im_k), dim=1)
        labels = torch.zeros(q.shape[0], dtype=torch.long)
        losses = []
        for qq in (q, q_m, q_m_flip):
            logits = torch.cat([torch.einsum("nc,nc->n", qq, k)[:, None], torch.einsum("nc,ck->nk", qq, queue)], 1)
            losses.append(F.cross_entropy(logits / m.config.tau, labels))
        return losses

    l0, m11, m12 = contrastive(x1, x2)
    if not symmetric:
        return l0 + lam * m11 + (1 - lam) * m12
    l21, m21, m22 = contrastive(x2, x1)
    return l0 + l21 + lam * m11 + (1 - lam) * m12 + lam * m21 + (1 - lam) * m22


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("mode,box", [("global", None), ("region", (4, 20, 8, 24))])
def test_loss_equals_official_formula(symmetric, mode, box):
    m = model(symmetric=symmetric).eval()
    x = views()
    out = m(x, unmix_lam=0.3, unmix_mode=mode, unmix_box=box)
    x1, x2 = x[:, 0], x[:, 1]
    if mode == "global":
        mixed, lam = 0.3 * x1 + 0.7 * x1.flip(0), 0.3
    else:
        mixed = x1.clone()
        y1, y2, c1, c2 = box
        mixed[:, :, y1:y2, c1:c2] = x1.flip(0)[:, :, y1:y2, c1:c2]
        lam = 1 - (y2 - y1) * (c2 - c1) / (32 * 32)
    assert out.unmix_lam.item() == pytest.approx(lam)
    ref = official_loss(m, x1, x2, mixed, lam, symmetric)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    terms = [out.loss_12, out.loss_21, out.loss_mix, out.loss_mix_reverse]
    assert out.loss.item() == pytest.approx(sum(t.item() for t in terms if t is not None), rel=1e-6)


def test_flipped_features_equal_a_second_forward():
    m = model().eval()
    x = views()
    out = m(x, unmix_lam=0.6, unmix_mode="global")
    x1, x2 = x[:, 0], x[:, 1]
    mixed = 0.6 * x1 + 0.4 * x1.flip(0)
    with torch.no_grad():
        q_second = F.normalize(m._query(mixed.flip(0)), dim=1)  # a real forward of the reversed mixed batch
        k = F.normalize(m._key(x2, shuffle=False), dim=1)
        from hf_mixssl.models.losses import info_nce_queue

        expected = 0.4 * info_nce_queue(q_second, k, m.queue.queue, tau=m.config.tau)
    assert out.loss_mix_reverse.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixed_keys_never_enqueued():
    m = model(bn_splits=1).train()
    x = views()
    key_encoder = copy.deepcopy(m).train()
    m(x)
    assert int(m.queue.ptr) == 8  # only the clean view's keys (asymmetric: one key set)
    with torch.no_grad():
        expected = F.normalize(key_encoder.projector_k(pooled_features(key_encoder.backbone_k, x[:, 1])), dim=1)
    assert torch.allclose(m.queue.queue[:8], expected, atol=1e-5)


def test_every_trainable_param_gets_grad_v3():
    m = model(version=3).train()
    out = m(views())
    out.loss.backward()
    assert out.loss_mix is not None and out.loss_mix_reverse is not None
    for name, p in m.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_config_validation():
    with pytest.raises(ValueError, match="unmix_global_prob"):
        MoCoConfig(unmix=True, unmix_global_prob=2.0)
    with pytest.raises(ValueError, match="unmix_beta"):
        MoCoConfig(unmix=True, unmix_beta=0.0)
