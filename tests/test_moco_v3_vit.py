"""MoCo v3's ViT against a hand copy of facebookresearch/moco-v3 ``vits.py`` (``VisionTransformerMoCo``; only the
timm import paths are today's) for the same RNG state."""

import math
from functools import partial, reduce
from operator import mul

import pytest
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from hf_mixssl import MoCoConfig, MoCoModel
from hf_mixssl.models.backbones import create_backbone, moco_v3_vit_init, sincos_2d_position_embedding


class VisionTransformerMoCo(VisionTransformer):
    def __init__(self, stop_grad_conv1=False, **kwargs):
        super().__init__(**kwargs)
        # Use fixed 2D sin-cos position embedding
        self.build_2d_sincos_position_embedding()

        # weight initialization
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if 'qkv' in name:
                    # treat the weights of Q, K, V separately
                    val = math.sqrt(6. / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -val, val)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)

        if isinstance(self.patch_embed, PatchEmbed):
            # xavier_uniform initialization
            val = math.sqrt(6. / float(3 * reduce(mul, self.patch_embed.patch_size, 1) + self.embed_dim))
            nn.init.uniform_(self.patch_embed.proj.weight, -val, val)
            nn.init.zeros_(self.patch_embed.proj.bias)

            if stop_grad_conv1:
                self.patch_embed.proj.weight.requires_grad = False
                self.patch_embed.proj.bias.requires_grad = False

    def build_2d_sincos_position_embedding(self, temperature=10000.):
        h, w = self.patch_embed.grid_size
        grid_w = torch.arange(w, dtype=torch.float32)
        grid_h = torch.arange(h, dtype=torch.float32)
        grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")  # the default of the official's torch
        assert self.embed_dim % 4 == 0, 'Embed dimension must be divisible by 4 for 2D sin-cos position embedding'
        pos_dim = self.embed_dim // 4
        omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
        omega = 1. / (temperature**omega)
        out_w = torch.einsum('m,d->md', [grid_w.flatten(), omega])
        out_h = torch.einsum('m,d->md', [grid_h.flatten(), omega])
        pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None, :, :]

        assert self.num_prefix_tokens == 1, 'Assuming one and only one token, [cls]'
        pe_token = torch.zeros([1, 1, self.embed_dim], dtype=torch.float32)
        self.pos_embed = nn.Parameter(torch.cat([pe_token, pos_emb], dim=1))
        self.pos_embed.requires_grad = False


def official_vit_small(depth=12, **kwargs):
    """``vits.vit_small`` (``depth`` exposed to keep the test small)."""
    return VisionTransformerMoCo(
        patch_size=16, embed_dim=384, depth=depth, num_heads=12, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


def test_sincos_embedding_equals_official():
    torch.manual_seed(0)
    official = official_vit_small(num_classes=0, depth=1)
    torch.testing.assert_close(sincos_2d_position_embedding((14, 14), 384), official.pos_embed.data, rtol=0, atol=0)


def test_vit_small_equals_official_for_the_same_rng_state():
    torch.manual_seed(0)
    official = official_vit_small(num_classes=0, depth=2, stop_grad_conv1=True)
    torch.manual_seed(0)
    ours = moco_v3_vit_init(create_backbone("vit_small_patch16_224", num_heads=12, depth=2))
    theirs = official.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert not ours.pos_embed.requires_grad
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                               official.forward_head(official.forward_features(x), pre_logits=True))


def test_preset_builds_the_official_vit_and_keeps_it_frozen_through_save_load(tmp_path):
    from hf_mixssl.train.arguments import parse_args

    args = parse_args(["--preset", "moco_v3_vit", "--max_steps", "1"])
    settings = args.model_settings
    assert settings["vit_init"] == "moco_v3" and settings["backbone_kwargs"] == {"num_heads": 12}
    config = MoCoConfig(version=3, backbone="vit_small_patch16_224", backbone_kwargs={"num_heads": 12, "depth": 1},
                        vit_init="moco_v3", freeze_patch_embed=True, proj_hidden_dim=64, proj_dim=32,
                        pred_hidden_dim=64, proj_num_layers=3)
    model = MoCoModel(config)
    assert model.backbone.blocks[0].attn.num_heads == 12
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad and n.startswith("backbone.")}
    assert {"backbone.pos_embed", "backbone.patch_embed.proj.weight"} <= frozen
    torch.testing.assert_close(model.backbone_k.pos_embed, model.backbone.pos_embed)  # k starts as q's copy
    model.save_pretrained(tmp_path)
    loaded = MoCoModel.from_pretrained(tmp_path)
    assert not loaded.backbone.pos_embed.requires_grad
    torch.testing.assert_close(loaded.backbone.pos_embed, sincos_2d_position_embedding((14, 14), 384))
    with pytest.raises(ValueError, match="vit_init"):
        MoCoConfig(vit_init="jax")
