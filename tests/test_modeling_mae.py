"""MAE on a timm ViT: fixed positions, visible-only encoder, gradients, save/load, the exported encoder."""

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel

import hf_mixssl  # noqa: F401
from hf_mixssl import MAEConfig, MAEModel
from hf_mixssl.sharing.hub import export_encoder
from hf_mixssl.models.masking import sincos_pos_embed_2d


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(backbone="vit_tiny_patch16_224", backbone_kwargs={"patch_size": 4, "depth": 2}, image_size=32,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    base.update(kw)
    return MAEModel(MAEConfig(**base))


def images(b=3):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_position_embeddings_are_fixed_sincos():
    model = tiny()
    assert torch.equal(model.encoder.pos_embed[0], sincos_pos_embed_2d(192, (8, 8), cls_token=True))
    assert torch.equal(model.decoder_pos_embed[0], sincos_pos_embed_2d(32, (8, 8), cls_token=True))
    assert not model.encoder.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert model.decoder_pos_embed.abs().sum() > 0


def test_encoder_sees_only_visible_patches_and_every_parameter_learns():
    model = tiny().train()
    x = images()
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(3))
    out = model(x, noise=noise)
    assert out.logits.shape == (3, 64, 48) and torch.equal(out.mask.sum(1), torch.full((3,), 48.0))
    latent, mask, _ = model.forward_encoder(x, mask_ratio=0.75, noise=noise)
    assert latent.shape == (3, 1 + 16, 192)
    pixel_mask = mask.view(3, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    changed = x + 5.0 * pixel_mask  # only masked pixels change
    assert torch.allclose(model.forward_encoder(changed, mask_ratio=0.75, noise=noise)[0], latent, atol=1e-5)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    assert model.encoder.pos_embed.grad is None
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)


def official_add_weight_decay(model, weight_decay=1e-5, skip_list=()):
    """Hand copy of timm 0.3.2 ``optim_factory.add_weight_decay``, which MAE's main_pretrain.py calls (no skip list)."""
    decay = []
    no_decay = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.}, {"params": decay, "weight_decay": weight_decay}]


def test_weight_decay_groups_equal_the_official_ones():
    """cls_token and mask_token are decayed (3-D), biases and norms are not, the fixed positions are frozen."""
    from timm.optim import create_optimizer_v2

    model = tiny()
    ours = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, filter_bias_and_bn=True)
    decayed = {id(p) for g in ours.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    official = {id(p) for p in official_add_weight_decay(model, 0.05)[1]["params"]}
    assert decayed == official
    assert id(model.mask_token) in decayed and id(model.encoder.cls_token) in decayed


def test_round_trip_keeps_fixed_embeddings_and_outputs(tmp_path):
    model = tiny(feature_pool="mean").eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is MAEModel and loaded.config.feature_pool == "mean"
    assert loaded.decoder_pos_embed.abs().sum() > 0  # the ViTMAE pitfall: zeros after from_pretrained
    assert torch.equal(loaded.decoder_pos_embed, model.decoder_pos_embed)
    assert not loaded.encoder.pos_embed.requires_grad and not loaded.decoder_pos_embed.requires_grad
    x, noise = images(), torch.rand(3, 64)
    assert torch.allclose(loaded(x, noise=noise, return_loss=True).loss, model(x, noise=noise, return_loss=True).loss,
                          atol=1e-6)
    assert torch.allclose(loaded.extract_features(x), model.extract_features(x), atol=1e-5)


def test_feature_pools():
    model = tiny().eval()
    x = images()
    tokens = model.encoder.forward_features(x)
    assert torch.equal(model.extract_features(x), tokens[:, 0])
    model.config.feature_pool = "mean"
    assert torch.allclose(model.extract_features(x), tokens[:, 1:].mean(1))


def test_exported_encoder_loads_in_stock_timm_without_hf_mixssl(tmp_path):
    model = tiny().eval()
    out = export_encoder(model.get_encoder(), tmp_path / "encoder", image_size=32, mean=model.config.image_mean,
                         std=model.config.image_std)
    x = images(2)
    torch.save({"x": x, "y": model.extract_features(x)}, tmp_path / "expected.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["hf_mixssl"] = None
        import timm, torch
        from transformers import AutoModel
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        enc = timm.create_model("local-dir:{out}", pretrained=True).eval()
        assert enc.num_classes == 0
        assert torch.allclose(enc.forward_features(expected["x"])[:, 0], expected["y"], atol=1e-5)
        wrapped = AutoModel.from_pretrained({str(out)!r}).eval()  # transformers' TimmWrapperModel
        assert torch.allclose(wrapped(expected["x"]).last_hidden_state[:, 0], expected["y"], atol=1e-5)
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_pictures_rows():
    grid = tiny().pictures(images(4))["mae_reconstruction"]
    assert grid.shape == (3, 4 * 34 + 2, 4 * 34 + 2) and 0.0 <= grid.min() and grid.max() <= 1.0


@pytest.mark.parametrize("field,value", [("mask_ratio", 1.0), ("decoder_num_heads", 5), ("feature_pool", "max"),
                                         ("decoder_depth", 0)])
def test_invalid_config(field, value):
    with pytest.raises(ValueError, match=field):
        MAEConfig(**{field: value})


def test_non_vit_backbone_is_rejected():
    with pytest.raises(ValueError, match="VisionTransformer"):
        MAEModel(MAEConfig(backbone="test_resnet", image_size=32))
