"""MAE (He et al. 2021): a timm Vision Transformer encodes only the visible patches; a light decoder
reconstructs the pixels of the masked ones.

Per step, images ``[B, C, H, W]`` -> ``N`` patch tokens + fixed sin-cos positions -> keep
``L = round(N (1 - mask_ratio))`` per sample (argsort of noise) -> ``[CLS] + L`` tokens through the encoder
-> ``decoder_embed`` -> mask tokens fill the removed slots (un-shuffled by ``ids_restore``) -> decoder
position embedding -> decoder blocks -> ``Linear(p*p*C)`` per patch -> MSE on the masked patches only.

The encoder stays a stock timm ``VisionTransformer`` (its ``pos_embed`` holds the fixed values and is frozen),
so :meth:`MAEModel.get_encoder` needs no hf_mixssl code to load. Initialisation follows ``models_mae.py``
(xavier-uniform Linear and patch projection, N(0, 0.02) tokens, LayerNorm eps 1e-6), not HF's ViTMAE.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers.utils import ModelOutput

from .backbones import create_backbone
from .configuration_mae import MAEConfig
from .masking import masked_mse_loss, patch_targets, random_masking, sincos_pos_embed_2d, unpatchify
from .visualization import denormalize, image_grid
from .pretrained import VisionPreTrainedModel, single_view


@dataclass
class MAEOutput(ModelOutput):
    """MAE output.

    Args:
        loss: MSE on masked patches (pixel targets, per-patch normalised when ``norm_pix_loss``).
        logits: predicted patches ``[B, N, p*p*C]`` (in the target space).
        mask: ``[B, N]``, 1 where the patch was removed.
        ids_restore: ``[B, N]``, the un-shuffle indices of this step's mask.
        features: ``[B, D]`` encoder features, at inference only (then nothing else is set).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
    features: torch.Tensor | None = None


class MAEPreTrainedModel(VisionPreTrainedModel):
    config_class = MAEConfig
    config: MAEConfig
    base_model_prefix = "mae"


def _check_vit(encoder: nn.Module, name: str) -> None:
    needed = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")
    if any(getattr(encoder, a, None) is None for a in needed):
        raise ValueError(f"MAE needs a timm VisionTransformer with a class token and an absolute position "
                         f"embedding; backbone {name!r} ({type(encoder).__name__}) is not one")
    if getattr(encoder, "reg_token", None) is not None or getattr(encoder, "dynamic_img_size", False):
        raise ValueError(f"backbone {name!r}: register tokens and dynamic_img_size are not supported by MAE")


def _mae_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MAEModel(MAEPreTrainedModel):
    """Masked autoencoder over a timm ViT; ``forward(pixel_values, noise=None)`` returns :class:`MAEOutput`."""

    def __init__(self, config: MAEConfig) -> None:
        from timm.models.vision_transformer import Block

        super().__init__(config)
        kwargs = {**config.backbone_kwargs, "img_size": config.image_size}
        try:
            self.encoder = create_backbone(config.backbone, **kwargs)
        except TypeError as e:  # e.g. a CNN: no img_size / patch_size arguments
            raise ValueError(f"MAE needs a timm VisionTransformer; backbone {config.backbone!r} with "
                             f"{kwargs} cannot be built as one: {e}") from e
        enc = self.encoder
        _check_vit(enc, config.backbone)
        self.patch_size = int(enc.patch_embed.patch_size[0])
        self.grid = tuple(int(g) for g in enc.patch_embed.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.embed_dim, dd = enc.embed_dim, config.decoder_embed_dim
        self.in_chans = enc.patch_embed.proj.in_channels
        self.with_cls_pos = not enc.no_embed_class  # pos_embed has a (zero) row for the class token

        self.decoder_embed = nn.Linear(self.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dd), requires_grad=False)
        self.decoder_blocks = nn.Sequential(*[
            Block(dd, config.decoder_num_heads, mlp_ratio=config.decoder_mlp_ratio, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(config.decoder_depth)
        ])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, self.patch_size**2 * self.in_chans)
        self._initialize_mae()
        self.post_init()

    @torch.no_grad()
    def _initialize_mae(self) -> None:
        """``models_mae.initialize_weights``: fixed sin-cos positions, xavier patch projection, N(0, .02) tokens."""
        enc = self.encoder
        pos = sincos_pos_embed_2d(self.embed_dim, self.grid, cls_token=self.with_cls_pos)
        enc.pos_embed.copy_(pos[None])
        enc.pos_embed.requires_grad_(False)
        self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.config.decoder_embed_dim, self.grid, cls_token=True)[None])
        w = enc.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if module is not enc.patch_embed.proj:
                _mae_init(module)

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW leaves undecayed besides biases and norms (timm reads this): the fixed position
        embeddings only (frozen anyway). ``main_pretrain.py`` calls ``add_weight_decay`` without a skip list, so
        ``cls_token`` and ``mask_token`` (3-D tensors) are decayed, as here."""
        return {"encoder.pos_embed", "decoder_pos_embed"}

    # ------------------------------------------------------------------------------------- encoder
    def forward_encoder(
        self, pixel_values: torch.Tensor, *, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` -> ``(latent [B, 1 + L, D], mask [B, N], ids_restore [B, N])``."""
        enc = self.encoder
        x = enc.patch_embed(pixel_values)  # [B, N, D]
        pos = enc.pos_embed
        x = x + (pos[:, 1:] if self.with_cls_pos else pos)
        x, mask, ids_restore = random_masking(x, mask_ratio, noise=noise)
        cls = enc.cls_token + (pos[:, :1] if self.with_cls_pos else 0.0)
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = enc.norm(enc.blocks(enc.norm_pre(x)))
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent [B, 1 + L, D]`` -> predicted patches ``[B, N, p*p*C]``."""
        x = self.decoder_embed(latent)
        b, n, d = x.shape[0], ids_restore.shape[1], x.shape[2]
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> MAEOutput:
        """``pixel_values: [B, C, H, W]`` (or one view ``[B, 1, C, H, W]``); ``noise [B, N]`` fixes the mask.

        ``labels`` are accepted and ignored (self-supervised). In eval mode (or with ``return_loss=False``) the
        output is ``features`` only (:meth:`extract_features`, for ``pipeline("image-feature-extraction")``); pass
        ``return_loss=True`` for the reconstruction loss of an eval-mode model.
        """
        if self.returns_features(pixel_values, return_loss):
            return MAEOutput(features=self.extract_features(pixel_values))
        pixel_values = single_view(pixel_values)
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(pixel_values, mask_ratio=ratio, noise=noise)
        pred = self.forward_decoder(latent, ids_restore)
        target = patch_targets(pixel_values.float(), self.patch_size, norm_pix=self.config.norm_pix_loss)
        loss = masked_mse_loss(pred, target, mask)
        return MAEOutput(loss=loss, logits=pred, mask=mask, ids_restore=ids_restore)

    # ------------------------------------------------------------------------------------- features
    @torch.no_grad()
    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder features on all patches ``[B, D]``: the class token or the mean patch token (``feature_pool``)."""
        pixel_values = single_view(pixel_values)
        tokens = self.encoder.forward_features(pixel_values)
        if self.config.feature_pool == "mean":
            return tokens[:, self.encoder.num_prefix_tokens:].mean(dim=1)
        return tokens[:, 0]

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """The encoder from a timm ViT state dict, except ``pos_embed``: MAE's position embedding stays the fixed
        2-D sin-cos one (a supervised ViT's learned embedding would replace it)."""
        state = {k: v for k, v in state.items() if k != "pos_embed"}
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"pos_embed"}:
            raise RuntimeError(f"encoder state does not fit: missing {sorted(set(missing) - {'pos_embed'})}, "
                               f"unexpected {sorted(unexpected)}")

    def get_encoder(self) -> nn.Module:
        """A copy of the encoder: a stock timm ``VisionTransformer`` (no head) holding the fixed positions."""
        encoder = copy.deepcopy(self.encoder)
        encoder.requires_grad_(True)
        return encoder

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, *, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images ``[B, C, H, W]`` (normalised) -> ``{"masked", "reconstruction", "pasted"}`` in the same space.

        With ``norm_pix_loss`` the predicted patches are mapped back with each target patch's own mean and
        std (as the official visualisation does); ``pasted`` puts the visible patches back.
        """
        out = self.forward(pixel_values, noise=noise, return_loss=True)
        p, x = self.patch_size, pixel_values.float()
        pred = out.logits.float()
        if self.config.norm_pix_loss:
            raw = patch_targets(x, p, norm_pix=False)
            pred = pred * (raw.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + raw.mean(dim=-1, keepdim=True)
        recon = unpatchify(pred, p, grid=self.grid)
        m = unpatchify(out.mask[..., None].expand(-1, -1, p * p * self.in_chans).float(), p, grid=self.grid)
        return {"mask": m, "reconstruction": recon, "pasted": x * (1 - m) + recon * m}

    @torch.no_grad()
    def pictures(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Rows: originals, masked inputs (grey = removed), reconstructions, reconstructions + visible patches."""
        pixel_values = single_view(pixel_values)
        was_training = self.training
        self.eval()
        try:
            r = self.reconstruct(pixel_values)
        finally:
            self.train(was_training)
        mean, std = self.config.image_mean, self.config.image_std
        original = denormalize(pixel_values.float(), mean, std)
        masked = original * (1 - r["mask"]) + 0.5 * r["mask"]
        return {"mae_reconstruction": image_grid([original, masked, denormalize(r["reconstruction"], mean, std),
                                                  denormalize(r["pasted"], mean, std)])}


__all__ = ["MAEModel", "MAEOutput", "MAEPreTrainedModel"]
