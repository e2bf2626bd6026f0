"""MoCo v1 / v2 / v3 as a ``transformers.PreTrainedModel`` over a timm backbone.

Papers: He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR 2020);
Chen et al., "Improved Baselines with Momentum Contrastive Learning" (2020); Chen, Xie, He, "An Empirical
Study of Training Self-Supervised Vision Transformers" (ICCV 2021). Official code:
github.com/facebookresearch/moco, github.com/facebookresearch/moco-v3.

Only sibling role modules are imported (``from .x import``), so ``save_pretrained`` can ship this file
with the weights and ``trust_remote_code=True`` works without hf_mixssl installed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbones import create_backbone, moco_v3_vit_init, pooled_features
from .configuration_moco import MoCoConfig
from .distributed import batch_shuffle, batch_unshuffle, concat_all_gather, rank
from .heads import build_mlp, convert_split_bn, revert_split_bn
from .losses import contrastive_all_keys, info_nce_queue, unmix_terms
from .mixing import MixResult, unmix_images
from .momentum import KeyQueue, make_momentum_copy, momentum_schedule, update_momentum
from .visualization import denormalize, image_grid
from .pretrained import VisionPreTrainedModel


@dataclass
class MoCoOutput(ModelOutput):
    """MoCo forward output.

    Args:
        loss: total loss, the sum of the terms below that are present.
        loss_12: contrastive loss of queries from view 1 against keys from view 2.
        loss_21: the reverse direction (``None`` for asymmetric v1/v2).
        loss_mix: Un-Mix term ``lam * L(q_mix, k)`` (summed over key sets; ``None`` without Un-Mix).
        loss_mix_reverse: Un-Mix term ``(1 - lam) * L(q_mix.flip(0), k)``.
        unmix_lam: the mixing ratio used for this batch (after the CutMix box correction).
        features: ``[B, D]`` features of plain images at inference only (then nothing else is set).
    """

    loss: torch.Tensor | None = None
    loss_12: torch.Tensor | None = None
    loss_21: torch.Tensor | None = None
    loss_mix: torch.Tensor | None = None
    loss_mix_reverse: torch.Tensor | None = None
    unmix_lam: torch.Tensor | None = None
    features: torch.Tensor | None = None


class MoCoPreTrainedModel(VisionPreTrainedModel):
    config_class = MoCoConfig
    config: MoCoConfig
    base_model_prefix = "moco"


def _build_projector(config: MoCoConfig, in_dim: int) -> nn.Sequential:
    """v1: ``Linear(d, 128)``; v2: ``Linear(d, d) ReLU Linear(d, 128)``; v3: ``[Linear BN ReLU]* Linear BN``."""
    hidden = config.proj_hidden_dim or in_dim
    dims = [in_dim] + [hidden] * (config.proj_num_layers - 1) + [config.proj_dim]
    if config.version == 3:
        return build_mlp(dims, norm=True, bias=False, last_norm=True, last_norm_affine=False)
    return build_mlp(dims)


class MoCoModel(MoCoPreTrainedModel):
    """MoCo: query encoder (backbone + projector [+ predictor]) and its momentum key encoder.

    ``forward(pixel_values: [B, 2, C, H, W])`` returns a :class:`MoCoOutput`. The training loop calls
    :meth:`update_momentum` after each optimizer step; the v1/v2 queue is filled in ``forward`` in
    training mode only.
    """

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(config.backbone, cifar_stem=config.cifar_stem, **config.backbone_kwargs)
        convert_split_bn(self.backbone, config.bn_splits)
        if config.vit_init == "moco_v3":
            moco_v3_vit_init(self.backbone)
        if config.freeze_patch_embed:
            patch_embed = getattr(self.backbone, "patch_embed", None)
            if patch_embed is None:
                raise ValueError(f"freeze_patch_embed=True needs a ViT backbone; {config.backbone} has no patch_embed")
            patch_embed.requires_grad_(False)
        dim = self.backbone.num_features
        self.projector = _build_projector(config, dim)
        self.predictor = None
        if config.version == 3:
            # ResNet predictor ends without BN, ViT's with BN (official `_build_projector_and_predictor_mlps`).
            is_vit = hasattr(self.backbone, "patch_embed")
            self.predictor = build_mlp(
                [config.proj_dim, config.pred_hidden_dim, config.proj_dim],
                norm=True, bias=False, last_norm=is_vit, last_norm_affine=False,
            )
        self.backbone_k = make_momentum_copy(self.backbone)
        self.projector_k = make_momentum_copy(self.projector)
        self.queue = KeyQueue(config.queue_size, config.proj_dim) if config.version < 3 else None
        self.post_init()

    # ----------------------------------------------------------------------------------- momentum
    @torch.no_grad()
    def update_momentum(self, progress: float) -> float:
        """EMA step of the key encoder at training ``progress`` in [0, 1]; returns the momentum used."""
        m = momentum_schedule(progress, base=self.config.momentum, kind=self.config.momentum_schedule)
        update_momentum(self.backbone_k, self.backbone, m=m)
        update_momentum(self.projector_k, self.projector, m=m)
        return m

    # ----------------------------------------------------------------------------------- encoders
    def _query(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projector(pooled_features(self.backbone, x))
        return self.predictor(z) if self.predictor is not None else z

    @torch.no_grad()
    def _key(self, x: torch.Tensor, *, shuffle: bool) -> torch.Tensor:
        if shuffle:
            x, idx_unshuffle = batch_shuffle(x)
        k = self.projector_k(pooled_features(self.backbone_k, x))
        if shuffle:
            k = batch_unshuffle(k, idx_unshuffle)
        return k

    @torch.no_grad()
    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features for kNN / linear probes: ``[B, C, H, W] -> [B, D]`` (``config.eval_features``)."""
        feats = pooled_features(self.backbone, pixel_values)
        if self.config.eval_features == "projection":
            feats = F.normalize(self.projector(feats), dim=1)
        return feats

    @torch.no_grad()
    def pictures(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Grids of the two views (and Un-Mix's mixed view 1) for ``pixel_values: [n, 2, C, H, W]``."""
        x1, x2 = pixel_values[:, 0], pixel_values[:, 1]
        rows = [x1, x2]
        if self.config.unmix:
            rows.append(unmix_images(x1, beta=self.config.unmix_beta, global_prob=self.config.unmix_global_prob).x)
        mean, std = self.config.image_mean, self.config.image_std
        return {"views": image_grid([denormalize(r, mean, std) for r in rows])}

    def get_encoder(self) -> nn.Module:
        """The trained query backbone as a standalone plain timm model (a copy, SplitBatchNorm reverted)."""
        return revert_split_bn(copy.deepcopy(self.backbone))

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Query backbone from ``state``; the key encoder starts as its copy (as at construction)."""
        self.backbone.load_state_dict(state, strict=True)
        self.backbone_k.load_state_dict(self.backbone.state_dict())

    # ----------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        unmix_lam: float | None = None,
        unmix_mode: str | None = None,
        unmix_box: tuple[int, int, int, int] | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> MoCoOutput:
        """``pixel_values: [B, 2, C, H, W]`` two augmented views; ``labels`` are ignored. Plain images
        ``[B, C, H, W]`` at inference (eval mode, or ``return_loss=False``) give ``features`` only
        (:meth:`extract_features`), as ``pipeline("image-feature-extraction")`` expects.

        With ``config.unmix``, view 1 is mixed with its reversed copy; ``unmix_lam`` / ``unmix_mode``
        (``"global"`` | ``"region"``) / ``unmix_box`` fix the otherwise random draw.
        """
        if self.returns_features(pixel_values, return_loss):
            return MoCoOutput(features=self.extract_features(pixel_values))
        if pixel_values.ndim != 5 or pixel_values.shape[1] < 2:
            raise ValueError(
                f"MoCo expects pixel_values of shape [B, 2, C, H, W] (two views), got {tuple(pixel_values.shape)}"
            )
        x1, x2 = pixel_values[:, 0], pixel_values[:, 1]
        mix = None
        if self.config.unmix:
            mix = unmix_images(x1, beta=self.config.unmix_beta, global_prob=self.config.unmix_global_prob,
                               lam=unmix_lam, mode=unmix_mode, box=unmix_box)
        if self.config.version == 3:
            return self._forward_v3(x1, x2, mix)
        return self._forward_v12(x1, x2, mix)

    @staticmethod
    def _output(mix: MixResult | None, loss_fn, q_mix_fn, key_sets, **terms) -> MoCoOutput:
        """Add the Un-Mix terms (when mixing) and sum every present term into ``loss``."""
        if mix is not None:
            terms["loss_mix"], terms["loss_mix_reverse"] = unmix_terms(loss_fn, q_mix_fn(mix.x), key_sets, lam=mix.lam)
        loss = sum(v for v in terms.values() if v is not None)
        lam = torch.tensor(mix.lam) if mix is not None else None
        return MoCoOutput(loss=loss, unmix_lam=lam, **terms)

    def _forward_v12(self, x1: torch.Tensor, x2: torch.Tensor, mix: MixResult | None) -> MoCoOutput:
        tau, shuffle = self.config.tau, self.config.shuffle_bn and self.training
        queue = self.queue.snapshot()  # a copy: the queue is updated in place below, before backward reads it

        def query(x: torch.Tensor) -> torch.Tensor:  # normalised in fp32: bf16 would quantise the similarities
            return F.normalize(self._query(x).float(), dim=1)

        def loss_fn(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return info_nce_queue(q, k, queue, tau=tau)

        q1 = query(x1)
        k2 = F.normalize(self._key(x2, shuffle=shuffle).float(), dim=1)
        keys, loss_21 = [k2], None
        if self.config.symmetric:
            q2 = query(x2)
            k1 = F.normalize(self._key(x1, shuffle=shuffle).float(), dim=1)
            loss_21 = loss_fn(q2, k1)
            keys.insert(0, k1)
        out = self._output(mix, loss_fn, query, keys[::-1], loss_12=loss_fn(q1, k2), loss_21=loss_21)
        if self.training:  # keys of the clean views only: mixed images never produce keys
            self.queue.enqueue(concat_all_gather(torch.cat(keys)))
        return out

    def _forward_v3(self, x1: torch.Tensor, x2: torch.Tensor, mix: MixResult | None) -> MoCoOutput:
        tau, offset = self.config.tau, rank() * x1.shape[0]

        def loss_fn(q: torch.Tensor, k_all: torch.Tensor) -> torch.Tensor:
            return contrastive_all_keys(q, k_all, tau=tau, offset=offset)

        q1, q2 = self._query(x1), self._query(x2)
        k1 = concat_all_gather(self._key(x1, shuffle=False))
        k2 = concat_all_gather(self._key(x2, shuffle=False))
        return self._output(mix, loss_fn, self._query, [k2, k1], loss_12=loss_fn(q1, k2), loss_21=loss_fn(q2, k1))


__all__ = ["MoCoModel", "MoCoOutput", "MoCoPreTrainedModel"]
