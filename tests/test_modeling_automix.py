"""AutoMix: which parameters learn from which loss, the mask, the EMA contract, save/load."""

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

import hf_mixssl  # noqa: F401
from hf_mixssl import AutoMixConfig, AutoMixModel
from hf_mixssl.models.modeling_automix import MixBlock, mask_ratio_loss


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(backbone="test_resnet", cifar_stem=True, num_labels=5, image_size=32, mixblock_stage=3)
    base.update(kw)
    return AutoMixModel(AutoMixConfig(**base))


def data(b=6):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 5, (b,), generator=g)


PERMS = (torch.tensor([5, 4, 3, 2, 1, 0]), torch.tensor([1, 2, 3, 4, 5, 0]))


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


class TestGradientRouting:
    def test_each_loss_reaches_only_its_parts(self):
        model = tiny().train()
        x, y = data()
        out = model(x, y, lam=(0.4, 0.6), perm=PERMS)
        mb = grads_of(model, out.loss_mixblock)
        assert mb and all(n.startswith("mixblock.") for n in mb)  # through the frozen momentum encoder
        mask = grads_of(model, model.config.mask_loss_weight * mask_ratio_loss(
            model.masks(x, lam=0.4, perm=PERMS[0]), 0.9, margin=0.0))
        assert mask and all(n.startswith("mixblock.") for n in mask)
        online = grads_of(model, out.loss_one + out.loss_mix)
        assert online and not any(n.startswith("mixblock.") for n in online)  # the backbone's mask is detached
        assert any(n.startswith("backbone.") for n in online) and any(n.startswith("head_mix.") for n in online)
        for name, p in model.named_parameters():
            if name.startswith(("backbone_k.", "head_one_k.", "head_mix_k.")):
                assert not p.requires_grad, name

    def test_lam_margin_falls_back_to_mixup(self):
        model = tiny().train()
        x, y = data()
        out = model(x, y, lam=(0.5, 0.95), perm=PERMS)  # 0.95 >= 1 - 0.08: plain Mixup for the backbone
        from hf_mixssl.models.losses import mixed_cross_entropy

        mixed = 0.95 * x + 0.05 * x[PERMS[1]]
        ref = mixed_cross_entropy(model.head_mix(model.backbone(mixed)), y, y[PERMS[1]], lam=0.95)
        assert out.loss_mix.item() == pytest.approx(ref.item(), rel=1e-5)


class TestMixBlock:
    def test_mask_range_shape_and_init(self):
        block = MixBlock(16, lam_concat=True, init_std=0.01)
        assert block.qk.weight.std().item() == pytest.approx(0.01, rel=0.3)
        m = block(torch.randn(4, 16, 4, 4), lam=0.3, perm=torch.tensor([3, 2, 1, 0]), size=(32, 32))
        assert m.shape == (4, 1, 32, 32) and (m > 0).all() and (m < 1).all()
        # nearest upsampling: each 8x8 block is constant
        assert torch.equal(m[:, :, :8, :8], m[:, :, :1, :1].expand(4, 1, 8, 8))

    def test_mask_loss_pushes_mean_towards_lam(self):
        torch.manual_seed(0)
        block = MixBlock(8)
        opt = torch.optim.SGD(block.parameters(), lr=5.0)
        feat, perm = torch.randn(4, 8, 4, 4), torch.tensor([1, 0, 3, 2])
        for _ in range(100):
            loss = mask_ratio_loss(block(feat, lam=0.2, perm=perm, size=(16, 16)), 0.2, margin=0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert 1 - block(feat, lam=0.2, perm=perm, size=(16, 16)).mean().item() == pytest.approx(0.2, abs=0.05)


class TestMomentum:
    def test_ema_moves_only_on_update_and_follows_schedule(self):
        model = tiny(momentum=0.9, momentum_final=1.0, momentum_start=0.5).train()
        x, y = data()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        model(x, y).loss.backward()
        opt.step()
        before = [p.clone() for p in model.backbone_k.parameters()]
        model(x, y)  # forward passes never move k
        assert all(torch.equal(a, b) for a, b in zip(before, model.backbone_k.parameters()))
        assert model.update_momentum(0.25) == pytest.approx(0.9)  # before momentum_start: the base value
        assert model.update_momentum(1.0) == pytest.approx(1.0)
        assert float(model.progress) == 1.0


def openmixup_cosine_schedule_momentum(cur_iter, max_iters, base_m, end_momentum, adjust_scope=(0.1, 1.0)):
    """Hand copy of OpenMixup ``CosineScheduleHook.before_train_iter`` (warming_up="constant")."""
    from math import cos, pi

    max_iter = int(max_iters * adjust_scope[1]) if adjust_scope[1] < 1 else max_iters
    min_iter = int(max_iters * adjust_scope[0]) if adjust_scope[0] > 0 else 0
    if min_iter <= cur_iter and cur_iter <= max_iter:
        return end_momentum - (end_momentum - base_m) * (cos(pi * cur_iter / float(max_iter)) + 1) / 2
    return base_m


class TestOfficialAutoMix:
    def test_ema_schedule_equals_openmixup_hook(self):
        model = tiny(momentum=0.999, momentum_final=0.999999, momentum_start=0.1)
        total = 1000
        for it in (0, 50, 99, 100, 101, 500, 999, 1000):
            expected = openmixup_cosine_schedule_momentum(it, total, 0.999, 0.999999)
            assert model.update_momentum(it / total) == pytest.approx(expected, abs=1e-12), it

    def test_momentum_encoder_bn_sees_clean_then_mixed_images_in_every_stage(self):
        """OpenMixup's step runs ``backbone_k(img)`` (all stages, train mode) and then ``backbone_k(img_mix_mb)``:
        the running statistics of the last stage's BatchNorm take both batches, in that order."""
        import copy

        model = tiny().train()
        x, y = data()
        k_copy = copy.deepcopy(model.backbone_k).train()
        out = model(x, y, lam=(0.4, 0.6), perm=PERMS)
        stage = dict(k_copy.named_modules())[k_copy.feature_info[3]["module"]]
        captured = []
        handle = stage.register_forward_hook(lambda _m, _i, out: captured.append(out))
        with torch.no_grad():
            k_copy(x)  # the clean pass: one plain forward of the whole backbone, its stage-3 output kept
        handle.remove()
        # the MixBlock's mask from the same weights gives the MixBlock's mixed batch
        with torch.no_grad():
            m = model.mixblock(captured[0], lam=0.4, perm=PERMS[0], size=(32, 32))
            k_copy(((1 - m) * x + m * x[PERMS[0]]))
        last_bn = [n for n, mod in model.backbone_k.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)][-1]
        ours = dict(model.backbone_k.named_modules())[last_bn]
        ref = dict(k_copy.named_modules())[last_bn]
        torch.testing.assert_close(ours.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.running_var, ref.running_var)
        assert int(ours.num_batches_tracked) == 2
        assert out.loss.isfinite()


class TestInferenceAndSaving:
    def test_inference_uses_momentum_encoder(self):
        model = tiny().eval()
        x, _ = data()
        expected = model.head_one_k(model.backbone_k(x))
        assert torch.allclose(model(x).logits, expected, atol=1e-6)
        with torch.no_grad():
            model.head_one.bias.add_(1.0)  # the online classifier moves, the momentum one does not
        assert torch.allclose(model.online_logits(x), expected + 1.0, atol=1e-5)
        assert torch.allclose(model(x).logits, expected, atol=1e-6)

    def test_round_trip_both_auto_classes(self, tmp_path):
        model = tiny().train()
        x, y = data()
        model(x, y)  # move BN statistics
        model.update_momentum(0.5)
        model.eval().save_pretrained(tmp_path)
        for auto in (AutoModel, AutoModelForImageClassification):
            loaded = auto.from_pretrained(tmp_path).eval()
            assert type(loaded) is AutoMixModel
            assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
            assert float(loaded.progress) == 0.5

    @pytest.mark.parametrize("field,value", [("mix_alpha", 0.0), ("mask_loss_schedule", "step"),
                                             ("lam_margin", 0.6), ("momentum_final", 0.5), ("momentum_start", 1.0)])
    def test_invalid_config(self, field, value):
        with pytest.raises(ValueError, match=field):
            AutoMixConfig(**{field: value})

    def test_stage_out_of_range(self):
        with pytest.raises(ValueError, match="mixblock_stage"):
            tiny(mixblock_stage=9)

