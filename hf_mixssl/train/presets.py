"""Official recipes as presets: ``--preset NAME`` sets these values as defaults (CLI flags still win).

Batch sizes are global (``global_batch_size``: over all processes and accumulation steps, as the papers state
them); the per-device batch follows from the world size. BatchNorm that the official code computes per GPU keeps
its group size on any world size (``bn_group_size``). ResNets are built as the official code builds them:
torchvision's default init (the last BN of each block starts at 1; ``zero_init_last: False`` for timm) for MoCo
v1/v2, the CIFAR Colab, Un-Mix and EMP-SSL; MoCo v3 and OpenMixup zero it, as timm does by default.

A method's own defaults (applied below any preset) live in its registry entry (``hf_mixssl.methods``).

Values are read from the official code and papers (METHODS.md). Learning rates marked ``scale_lr`` are
base rates multiplied by ``global_batch / 256`` (MoCo v3, MAE convention).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..data.views import CIFAR10_MEAN, CIFAR10_STD
from ..methods import get_method

_TORCHVISION_INIT = {"zero_init_last": False}  # torchvision resnet*(): zero_init_residual=False

# main_moco.py: 256 = 8 GPUs x 32, BN per GPU (groups of 32) with shuffle-BN across GPUs.
_MOCO_IMAGENET = {
    "backbone": "resnet50", "backbone_kwargs": _TORCHVISION_INIT, "image_size": 224, "global_batch_size": 256,
    "bn_group_size": 32, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4, "sgd_momentum": 0.9,
    "num_epochs": 200, "queue_size": 65536, "momentum": 0.999, "lr_schedule": "cosine", "exclude_bias_norm_wd": False,
    "lr_by_epoch": True,  # adjust_learning_rate(optimizer, epoch, args) once per epoch
}

_MOCO_CIFAR = {
    "method": "moco_v2", "backbone": "resnet18", "backbone_kwargs": _TORCHVISION_INIT, "cifar_stem": True,
    "image_size": 32, "image_mean": list(CIFAR10_MEAN), "image_std": list(CIFAR10_STD), "views": "moco_cifar",
    "global_batch_size": 512, "optimizer": "sgd", "learning_rate": 0.06, "weight_decay": 5e-4,
    "sgd_momentum": 0.9, "num_epochs": 200, "queue_size": 4096, "momentum": 0.99, "tau": 0.1,
    # The Colab's SplitBatchNorm(num_splits=8) on one GPU: BN over groups of 64 of its 512 images.
    "proj_num_layers": 1, "bn_group_size": 64, "symmetric": False, "lr_schedule": "cosine",
    "exclude_bias_norm_wd": False, "knn_k": 200, "knn_t": 0.1, "eval_features": "projection",
    "lr_by_epoch": True,  # the Colab's (and unmix_c10.py's) adjust_learning_rate once per epoch
}

# OpenMixup's CIFAR recipe for ResNet-18 (CIFAR-100 in the paper, run here on CIFAR-10): CIFAR stem,
# SGD lr 0.1 wd 1e-4 cosine, B 100, RandomCrop(32, 4) + flip.
_MIXUP_CIFAR = {
    "method": "mixup", "backbone": "resnet18", "cifar_stem": True, "image_size": 32,
    "image_mean": list(CIFAR10_MEAN), "image_std": list(CIFAR10_STD), "views": "classify",
    "global_batch_size": 100, "optimizer": "sgd", "learning_rate": 0.1, "weight_decay": 1e-4,
    "sgd_momentum": 0.9, "num_epochs": 800, "lr_schedule": "cosine", "exclude_bias_norm_wd": False,
    "lr_by_epoch": True,  # mmcv's CosineAnnealing lr hook updates by epoch (by_epoch=True)
}

_EMP_SSL_CIFAR = {
    "method": "emp_ssl", "backbone": "resnet18", "backbone_kwargs": _TORCHVISION_INIT, "cifar_stem": True,
    "image_size": 32, "global_batch_size": 100, "num_epochs": 30,
    # evaluate.py / func.py: kNN with k 20 and T 0.07.
    "knn_k": 20, "knn_t": 0.07, "num_patches": 20, "crop_scale": 0.25, "tcr_eps": 0.2, "invariance_weight": 200.0,
    "tcr_weight": 1.0, "hidden_dim": 4096, "z_dim": 1024, "eval_patches": 128, "eval_features": "pre_feature",
}

PRESETS: dict[str, dict[str, Any]] = {
    # MoCo v1 (He et al. 2020): linear head, tau 0.07, lr x0.1 at epochs 120 and 160 (main_moco.py --schedule).
    "moco_v1_imagenet": {"method": "moco_v1", **_MOCO_IMAGENET, "lr_schedule": "step", "lr_decay_epochs": [120, 160]},
    # MoCo v2 (Chen et al. 2020): MLP head, blur, tau 0.2, cosine; 67.5 linear top-1 at 200 ep.
    "moco_v2_imagenet": {"method": "moco_v2", **_MOCO_IMAGENET},
    # MoCo CIFAR-10 Colab: ResNet-18 CIFAR stem, B 512, lr 0.06, wd 5e-4, K 4096, m 0.99, tau 0.1,
    # SplitBatchNorm with 8 splits on one device, v2 augmentations without blur; the head is the ResNet's
    # own fc (Linear 512 -> 128), so proj_num_layers is 1. kNN 82.6 at 200 epochs (asymmetric).
    "moco_v2_cifar": _MOCO_CIFAR,
    # Un-Mix's official CIFAR-10 setting (unmix_c10.py): the Colab recipe, symmetric loss, P 0.5,
    # Beta(1, 1); kNN 92.25 at 1000 epochs (MoCo symmetric 90.49).
    "unmix_moco_cifar": {**_MOCO_CIFAR, "symmetric": True, "unmix": True, "unmix_global_prob": 0.5,
                         "unmix_beta": 1.0, "num_epochs": 1000},
    # Un-Mix on MoCo v2, ImageNet (UnMix_MoCo/for_ImageNet): 68.6 linear top-1 at 200 ep (MoCo v2 67.5).
    "vanilla_cifar": {**_MIXUP_CIFAR, "mix_modes": ["vanilla"]},
    "mixup_cifar": {**_MIXUP_CIFAR, "mix_modes": ["mixup"], "mix_alpha": [1.0]},
    "cutmix_cifar": {**_MIXUP_CIFAR, "mix_modes": ["cutmix"], "mix_alpha": [0.2]},
    # AutoMix CIFAR (OpenMixup automix_r18 CIFAR-100 config): Beta(2, 2), MixBlock on layer3, no lam channel,
    # constant mask loss 0.1, EMA 0.999 -> 0.999999 from 10% of training; 82.04 top-1 on CIFAR-100 at 800 ep.
    # OpenMixup's CIFAR configs anneal the lr to min_lr=0.05 (CosineAnnealing), not to 0.
    "automix_cifar": {**_MIXUP_CIFAR, "method": "automix", "min_lr": 0.05, "mix_alpha": [2.0], "mixblock_stage": 3,
                      "lam_concat": False, "mask_loss_weight": 0.1, "mask_loss_schedule": "constant",
                      "momentum": 0.999, "momentum_final": 0.999999, "momentum_start": 0.1},
    # AutoMix ImageNet R-50 (OpenMixup r50_l2_a2_near_lam_cat_mb_mlr1e_3_m0_bb_mlr0_ep100.py): lr 0.1 at B 256,
    # lam channel, cosine-decayed mask loss, EMA to 0.99999; the MixBlock's SGD group has momentum 0 and its own
    # cosine to 1e-3 (paramwise_options + addtional_scheduler); 77.91 top-1 at 100 ep, 79.25 at 300 ep.
    "automix_imagenet": {
        "method": "automix", "backbone": "resnet50", "image_size": 224, "views": "classify",
        "global_batch_size": 256, "optimizer": "sgd", "learning_rate": 0.1, "weight_decay": 1e-4,
        "sgd_momentum": 0.9, "num_epochs": 100, "lr_schedule": "cosine", "mix_alpha": [2.0], "mixblock_stage": 3,
        "lam_concat": True, "mask_loss_weight": 0.1, "mask_loss_schedule": "cosine", "momentum": 0.999,
        "momentum_final": 0.99999, "momentum_start": 0.1, "mixblock_momentum": 0.0, "mixblock_min_lr": 0.001,
        "lr_by_epoch": True,
    },
    "unmix_moco_v2_imagenet": {"method": "moco_v2", **_MOCO_IMAGENET, "unmix": True, "unmix_global_prob": 0.5,
                               "unmix_beta": 1.0},
    # MoCo v3 ResNet-50 (Chen, Xie, He 2021): LARS, B 4096, base lr 0.6 x B/256, wd 1e-6, 10 warmup
    # epochs, tau 1.0, m 0.99 -> 1 (cosine), crops from 0.2 of the area (CONFIG.md: --crop-min=.2);
    # 68.9 linear top-1 at 100 ep.
    "moco_v3_resnet50": {
        "method": "moco_v3", "backbone": "resnet50", "image_size": 224, "global_batch_size": 4096,
        "min_crop_scale": 0.2,
        "optimizer": "lars", "learning_rate": 0.6, "scale_lr": True, "weight_decay": 1e-6,
        "sgd_momentum": 0.9, "num_epochs": 100, "warmup_epochs": 10, "tau": 1.0,
        "lr_schedule": "cosine", "exclude_bias_norm_wd": True,
    },
    # MoCo v3 ViT-S/16: AdamW lr 1.5e-4 x B/256, wd 0.1 on every parameter (main_moco.py builds AdamW on
    # model.parameters()), 40 warmup epochs, tau 0.2, frozen patch embedding, 3-layer projector; 73.2 linear top-1
    # at 300 ep. vits.py's vit_small: 12 heads (timm's has 6), fixed 2-D sin-cos position embedding, its own init.
    "moco_v3_vit": {
        "method": "moco_v3", "backbone": "vit_small_patch16_224", "backbone_kwargs": {"num_heads": 12},
        "vit_init": "moco_v3", "image_size": 224,
        "global_batch_size": 4096, "optimizer": "adamw", "learning_rate": 1.5e-4, "scale_lr": True,
        "weight_decay": 0.1, "num_epochs": 300, "warmup_epochs": 40, "tau": 0.2, "proj_num_layers": 3,
        "freeze_patch_embed": True, "lr_schedule": "cosine", "exclude_bias_norm_wd": False,
    },
    # MAE ViT-B/16 (He et al. 2021): mask 0.75, decoder 512 x 8 x 16, norm_pix_loss, B 4096, 40 warmup of
    # 800 epochs; 83.6 top-1 after ImageNet fine-tuning (1600 ep).
    "mae_vit_base_imagenet": {
        "method": "mae", "backbone": "vit_base_patch16_224", "image_size": 224, "global_batch_size": 4096,
        "num_epochs": 800, "warmup_epochs": 40, "mask_ratio": 0.75, "decoder_embed_dim": 512, "decoder_depth": 8,
        "decoder_num_heads": 16, "norm_pix_loss": True,
    },
    # MAE at CIFAR scale (solo-learn's setting with ViT-Tiny): patch 4 at 32 px (64 patches, 16 visible), the
    # paper's decoder and optimiser, B 256; the epochs and warmup keep the paper's 1:20 ratio.
    "mae_vit_tiny_cifar": {
        "method": "mae", "backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"patch_size": 4}, "image_size": 32,
        "image_mean": list(CIFAR10_MEAN), "image_std": list(CIFAR10_STD), "global_batch_size": 256,
        "num_epochs": 400, "warmup_epochs": 20, "mask_ratio": 0.75, "decoder_embed_dim": 512, "decoder_depth": 8,
        "decoder_num_heads": 16, "norm_pix_loss": True,
    },
    # EMP-SSL CIFAR-10 (Tong et al. 2023): ResNet-18 CIFAR stem, 4096-4096-1024 projector, 20 patches of 0.25 the
    # area, B 100 images, TCR eps 0.2, invariance x200; linear top-1 80.6 after 1 epoch, 90.7 at 10, 93.1 at 30.
    "emp_ssl_cifar": _EMP_SSL_CIFAR,
    "emp_ssl_cifar_100": {**_EMP_SSL_CIFAR, "num_patches": 100},  # 200 patches: 82.6 / 91.5 / 93.4
    "emp_ssl_cifar_200": {**_EMP_SSL_CIFAR, "num_patches": 200},
}


@dataclass(frozen=True)
class Published:
    """What a preset should reach: the source, the metric (an ``eval_results.json`` key), the dataset it was
    measured on, the numbers (%) by epoch, and where the preset differs from the official recipe ("" = nowhere)."""

    source: str
    metric: str
    dataset: str
    by_epoch: dict[float, float]
    differs: str = ""


PUBLISHED: dict[str, Published] = {
    "moco_v1_imagenet": Published("He et al. 2020, Table; facebookresearch/moco main_moco.py", "linear_moco_top1",
                                  "ImageNet-1k", {200: 60.8}),
    "moco_v2_imagenet": Published("Chen et al. 2020, Table 1; facebookresearch/moco main_moco.py --aug-plus --mlp "
                                  "--cos", "linear_moco_top1", "ImageNet-1k", {200: 67.5, 800: 71.1}),
    "moco_v2_cifar": Published("facebookresearch/moco colab/moco_cifar10_demo.ipynb (asymmetric, 200-epoch schedule)",
                               "knn_top1", "CIFAR-10", {1: 32.0, 2: 33.5, 5: 38.0, 10: 48.0, 20: 61.4, 50: 73.3,
                                                        100: 78.1, 200: 82.6}),
    "unmix_moco_cifar": Published("szq0214/Un-Mix unmix_c10.py; Shen et al. 2022, Table 1 (symmetric)", "knn_top1",
                                  "CIFAR-10", {1000: 92.25}),
    "unmix_moco_v2_imagenet": Published("Shen et al. 2022, Table 3", "linear_moco_top1", "ImageNet-1k", {200: 68.6}),
    "moco_v3_resnet50": Published("Chen, Xie, He 2021, Table; facebookresearch/moco-v3 CONFIG.md", "linear_top1",
                                  "ImageNet-1k", {100: 68.9, 300: 72.8, 1000: 74.6}),
    "moco_v3_vit": Published("Chen, Xie, He 2021, Table; facebookresearch/moco-v3 CONFIG.md", "linear_top1",
                             "ImageNet-1k", {300: 73.2}),
    "mae_vit_base_imagenet": Published("He et al. 2021, Table 3 (fine-tuned, 1600-epoch pretraining)",
                                       "finetune_top1", "ImageNet-1k", {1600: 83.6}),
    "mixup_cifar": Published("Liu et al. 2022 (AutoMix), Table (OpenMixup, R-18)", "top1", "CIFAR-100", {800: 79.12},
                             differs="OpenMixup's numbers are on CIFAR-100; the default dataset here is CIFAR-10"),
    "cutmix_cifar": Published("Liu et al. 2022 (AutoMix), Table (OpenMixup, R-18)", "top1", "CIFAR-100", {800: 78.17},
                              differs="OpenMixup's numbers are on CIFAR-100; the default dataset here is CIFAR-10"),
    "automix_cifar": Published("Liu et al. 2022, Table; OpenMixup automix r18 CIFAR-100 config", "top1", "CIFAR-100",
                               {800: 82.04}, differs="OpenMixup's numbers are on CIFAR-100 (default dataset here: "
                               "CIFAR-10)"),
    "automix_imagenet": Published("Liu et al. 2022, Table (R-50)", "top1", "ImageNet-1k", {100: 77.91, 300: 79.25},
                                  differs=""),
    "emp_ssl_cifar": Published("Tong et al. 2023, Table 1 (20 patches); tsb0601/EMP-SSL", "linear_emp_ssl_top1",
                               "CIFAR-10", {1: 80.6, 10: 90.7, 30: 93.1}),
    "emp_ssl_cifar_200": Published("Tong et al. 2023, Table 1 (200 patches)", "linear_emp_ssl_top1", "CIFAR-10",
                                   {1: 82.6, 10: 91.5, 30: 93.4}),
}


def describe_preset(name: str) -> str:
    """A preset's values, source, published numbers and differences from the official recipe (``--help``)."""
    import textwrap

    values = ", ".join(f"{k}={v}" for k, v in PRESETS[name].items())
    lines = textwrap.wrap(f"preset {name}: {values}", 100, subsequent_indent="    ")
    pub = PUBLISHED.get(name)
    if pub:
        numbers = ", ".join(f"epoch {e:g}: {v:g}" for e, v in sorted(pub.by_epoch.items()))
        lines += [f"  source: {pub.source}", f"  published {pub.metric} on {pub.dataset}: {numbers}",
                  f"  differs from the official recipe: {pub.differs or 'nowhere known'}"]
    return "\n".join(lines)


def resolve_defaults(method: str | None, preset: str | None) -> dict[str, Any]:
    """The method's registry defaults overlaid by the preset's values (the preset may name the method)."""
    if preset is not None:
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset, list(PRESETS), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; choose one of {sorted(PRESETS)}"
            raise ValueError(f"unknown preset {preset!r}{hint}")
        preset_method = PRESETS[preset]["method"]
        if method is not None and method != preset_method:
            raise ValueError(f"preset {preset!r} is for method {preset_method!r}, not {method!r}")
        method = preset_method
    if method is None:
        raise ValueError("set --method or --preset")
    values = dict(get_method(method).defaults)
    if preset is not None:
        values.update(PRESETS[preset])
    values["method"] = method
    return values
