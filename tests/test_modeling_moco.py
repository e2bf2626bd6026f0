import pytest
import timm
import torch
from transformers import AutoConfig, AutoModel

import hf_mixssl  # noqa: F401  (registers the Auto classes)
from hf_mixssl import MoCoConfig, MoCoModel


def tiny_config(version: int, **kw) -> MoCoConfig:
    base = dict(version=version, backbone="test_resnet", cifar_stem=True, image_size=32, queue_size=32,
                proj_dim=16, proj_hidden_dim=0 if version < 3 else 32, pred_hidden_dim=32,
                proj_num_layers=1 if version == 1 else 2)
    base.update(kw)
    return MoCoConfig(**base)


def views(b: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("version,symmetric", [(1, False), (2, False), (2, True), (3, True)])
class TestGradients:
    def test_trainable_params_get_grad_momentum_params_none(self, version, symmetric):
        torch.manual_seed(0)
        model = MoCoModel(tiny_config(version, symmetric=symmetric, bn_splits=2)).train()
        out = model(views())
        out.loss.backward()
        for name, p in model.named_parameters():
            if name.startswith(("backbone_k.", "projector_k.")):
                assert not p.requires_grad and p.grad is None, name
            else:
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} got no gradient"
        assert (out.loss_21 is not None) == (symmetric or version == 3)


class TestMoCo:
    def test_key_encoder_starts_equal_and_moves_only_with_update(self):
        torch.manual_seed(0)
        model = MoCoModel(tiny_config(2)).train()
        for pq, pk in zip(model.backbone.parameters(), model.backbone_k.parameters()):
            assert torch.equal(pq, pk)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        model(views()).loss.backward()
        opt.step()
        before = [p.clone() for p in model.backbone_k.parameters()]
        model.eval()
        model(views(seed=1))  # forward passes never move the key encoder
        assert all(torch.equal(a, b) for a, b in zip(before, model.backbone_k.parameters()))
        m = model.update_momentum(0.5)
        for k0, k1, q in zip(before, model.backbone_k.parameters(), model.backbone.parameters()):
            assert torch.allclose(k1, m * k0 + (1 - m) * q, atol=1e-6)

    def test_queue_filled_in_training_only(self):
        model = MoCoModel(tiny_config(2, symmetric=True))
        model.eval()
        model(views())
        assert int(model.queue.ptr) == 0
        model.train()
        model(views())
        assert int(model.queue.ptr) == 16  # both key sets of 8 enqueued
        assert torch.allclose(model.queue.queue[:16].norm(dim=1), torch.ones(16), atol=1e-5)

    def test_v3_cosine_momentum(self):
        model = MoCoModel(tiny_config(3, momentum=0.99, momentum_schedule="cosine"))
        assert model.update_momentum(0.0) == pytest.approx(0.99)
        assert model.update_momentum(1.0) == pytest.approx(1.0)
        assert model.queue is None

    def test_v3_vit_backbone_with_frozen_patch_embed(self):
        cfg = tiny_config(3, backbone="test_vit", cifar_stem=False, backbone_kwargs={"img_size": 32, "patch_size": 8},
                          freeze_patch_embed=True, proj_num_layers=3)
        model = MoCoModel(cfg).train()
        model(views(4)).loss.backward()
        assert model.backbone.patch_embed.proj.weight.grad is None
        assert model.predictor[-1].__class__.__name__ == "BatchNorm1d"  # ViT predictor ends with BN

    def test_timm_init_is_kept(self):
        # transformers' default init would overwrite timm's conv init with N(0, 0.02).
        torch.manual_seed(3)
        reference = timm.create_model("test_resnet", num_classes=0)
        torch.manual_seed(3)
        model = MoCoModel(tiny_config(2, cifar_stem=False))
        ref_sd = reference.state_dict()
        for name, value in model.get_encoder().state_dict().items():
            assert torch.equal(value, ref_sd[name]), name

    def test_rejects_wrong_input_shape(self):
        with pytest.raises(ValueError, match=r"\[B, 2, C, H, W\]"):
            MoCoModel(tiny_config(2))(torch.randn(2, 3, 32, 32))

    def test_get_encoder_is_plain_timm(self):
        model = MoCoModel(tiny_config(2, bn_splits=4))
        enc = model.get_encoder()
        assert not any(type(m).__name__ == "SplitBatchNorm" for m in enc.modules())
        x = torch.randn(2, 3, 32, 32)
        model.eval()
        enc.eval()
        assert torch.allclose(enc(x), model.extract_features(x), atol=1e-6)


class TestConfig:
    @pytest.mark.parametrize("field,value", [("version", 4), ("tau", 0.0), ("queue_size", 0), ("momentum", 1.5),
                                             ("momentum_schedule", "linear"), ("eval_features", "logits"),
                                             ("bn_splits", 0), ("backbone", "")])
    def test_invalid_values_name_the_field(self, field, value):
        with pytest.raises(ValueError, match=field):
            MoCoConfig(**{field: value})

    def test_unknown_backbone(self):
        with pytest.raises(ValueError, match="not_a_model"):
            MoCoModel(MoCoConfig(backbone="not_a_model"))

    def test_cifar_stem_needs_resnet(self):
        with pytest.raises(ValueError, match="cifar_stem"):
            MoCoModel(MoCoConfig(backbone="test_vit", cifar_stem=True))


class TestSaveLoad:
    @pytest.mark.parametrize("version", [1, 2, 3])
    def test_round_trip_through_auto_classes(self, tmp_path, version):
        torch.manual_seed(0)
        model = MoCoModel(tiny_config(version, bn_splits=2)).train()
        model(views())  # move queue and BN statistics away from their initial values
        model.eval()
        model.save_pretrained(tmp_path)
        assert isinstance(AutoConfig.from_pretrained(tmp_path), MoCoConfig)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        assert type(loaded) is MoCoModel
        for (n1, t1), (n2, t2) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert n1 == n2 and torch.allclose(t1.float(), t2.float(), atol=1e-5), n1
        x = views(4, seed=5)
        assert torch.allclose(model.extract_features(x[:, 0]), loaded.extract_features(x[:, 0]), atol=1e-5)
        assert torch.allclose(model(x).loss, loaded(x).loss, atol=1e-5)
