"""Pretraining arguments: one typed dataclass, turned into an argparse parser.

Precedence (lowest to highest): field defaults < method defaults < ``--preset`` < ``--config FILE``
(YAML or JSON) < flags given on the command line. The resolved arguments are saved in the run dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .presets import PRESETS, resolve_defaults


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PretrainArguments:
    # ---- what to train
    method: str | None = _f(None, "moco_v1 | moco_v2 | moco_v3 | mixup | automix | mae | emp_ssl",
                            choices=["moco_v1", "moco_v2", "moco_v3", "mixup", "automix", "mae", "emp_ssl"])
    preset: str | None = _f(None, "an official recipe", choices=sorted(PRESETS))
    config: str | None = _f(None, "YAML/JSON file whose values become defaults")
    # ---- data
    dataset: str = _f("../shared/datasets/cifar10", "load_dataset path or Hub id")
    dataset_config: str | None = _f(None, "dataset config name")
    train_split: str = _f("train", "training split")
    eval_split: str | None = _f(None, "kNN split (default: test or validation when present)")
    image_column: str | None = _f(None, "image column (auto-detected)")
    label_column: str | None = _f(None, "label column for kNN (auto-detected)")
    views: str | None = _f(None, "view recipe: moco_v1 | moco_v2 | moco_cifar | moco_v3 | classify | mae | "
                                      "emp_ssl")
    min_crop_scale: float | None = _f(None, "RandomResizedCrop lower scale (recipe default)")
    shuffle_buffer_size: int = _f(10_000, "streaming shuffle buffer")
    num_workers: int = _f(2, "decode/augment worker processes per rank")
    cpu_threads: int | None = _f(None, "torch threads per process when training on CPU (default: the cores this "
                                       "process may use / processes on this machine; `accelerate launch` without "
                                       "--cpu sets OMP_NUM_THREADS=1)")
    min_image_size: int = _f(4, "skip images with a side below this many pixels")
    # ---- model (None = the method's default; see the config class for meanings)
    backbone: str | None = _f(None, "any timm model name")
    backbone_kwargs: dict | None = _f(None, "JSON dict of timm.create_model kwargs")
    cifar_stem: bool | None = _f(None, "3x3 stride-1 ResNet stem, no max-pool")
    image_size: int | None = _f(None, "training resolution")
    image_mean: list | None = _f(None, "JSON list, normalisation mean")
    image_std: list | None = _f(None, "JSON list, normalisation std")
    proj_hidden_dim: int | None = _f(None, "projector hidden width (0 = backbone width)")
    proj_dim: int | None = _f(None, "projection dim")
    proj_num_layers: int | None = _f(None, "projector Linear layers")
    pred_hidden_dim: int | None = _f(None, "v3 predictor hidden width")
    tau: float | None = _f(None, "temperature")
    queue_size: int | None = _f(None, "v1/v2 queue length")
    momentum: float | None = _f(None, "key encoder momentum (base)")
    momentum_schedule: str | None = _f(None, "constant | cosine")
    symmetric: bool | None = _f(None, "symmetric loss (v1/v2)")
    shuffle_bn: bool | None = _f(None, "shuffle-BN for keys")
    bn_splits: int | None = _f(None, "SplitBatchNorm splits")
    freeze_patch_embed: bool | None = _f(None, "v3 ViT: freeze the patch embedding")
    eval_features: str | None = _f(None, "kNN/probe features: MoCo backbone | projection; EMP-SSL pre_feature | "
                                         "backbone")
    unmix: bool | None = _f(None, "add Un-Mix image-mixture terms (MoCo v1/v2/v3)")
    unmix_global_prob: float | None = _f(None, "Un-Mix: probability of global mixup (else CutMix region)")
    unmix_beta: float | None = _f(None, "Un-Mix: lam ~ Beta(beta, beta)")
    mix_modes: list | None = _f(None, "mixup classifier policies (vanilla mixup cutmix fmix resizemix gridmix "
                                      "smoothmix saliencymix manifoldmix)", nargs="+", item_type=str)
    mix_probs: list | None = _f(None, "sampling probability of each mix mode", nargs="+", item_type=float)
    mix_alpha: list | None = _f(None, "Beta(alpha, alpha) for lam: one value or one per mode", nargs="+",
                                item_type=float)
    num_labels: int | None = _f(None, "classes (auto-detected from a ClassLabel feature or the labels)")
    label_smoothing: float | None = _f(None, "label smoothing of the classifier's cross-entropy")
    mixblock_stage: int | None = _f(None, "AutoMix: backbone feature_info index feeding the MixBlock")
    lam_concat: bool | None = _f(None, "AutoMix: lam as an extra MixBlock input channel")
    mask_loss_weight: float | None = _f(None, "AutoMix: mask-ratio loss weight")
    mask_loss_schedule: str | None = _f(None, "AutoMix: constant | cosine (decay the mask loss to 0)")
    lam_margin: float | None = _f(None, "AutoMix: plain Mixup for the backbone when lam is this close to 0/1")
    momentum_final: float | None = _f(None, "AutoMix: final EMA coefficient")
    momentum_start: float | None = _f(None, "AutoMix: training fraction before the EMA schedule starts")
    mixblock_lr_scale: float | None = _f(None, "AutoMix: MixBlock learning rate / backbone learning rate")
    mask_ratio: float | None = _f(None, "MAE: fraction of patches removed per sample")
    decoder_embed_dim: int | None = _f(None, "MAE: decoder width")
    decoder_depth: int | None = _f(None, "MAE: decoder blocks")
    decoder_num_heads: int | None = _f(None, "MAE: decoder attention heads")
    norm_pix_loss: bool | None = _f(None, "MAE: per-patch normalised pixel targets")
    feature_pool: str | None = _f(None, "MAE: kNN/linear features: cls | mean")
    num_patches: int | None = _f(None, "EMP-SSL: augmented patches per image per step")
    crop_scale: float | None = _f(None, "EMP-SSL: patch area as a fraction of the image")
    tcr_eps: float | None = _f(None, "EMP-SSL: coding-rate eps")
    invariance_weight: float | None = _f(None, "EMP-SSL: weight of the invariance term")
    tcr_weight: float | None = _f(None, "EMP-SSL: weight of the TCR term")
    eval_patches: int | None = _f(None, "EMP-SSL: bag-of-features patches per image for kNN / probes")
    hidden_dim: int | None = _f(None, "EMP-SSL: pre-feature / projector hidden width")
    z_dim: int | None = _f(None, "EMP-SSL: embedding dim")
    init_backbone: str | None = _f(None, "mixup classifier: start the backbone from an exported timm encoder "
                                         "(a run dir or its encoder/ dir); its architecture, kwargs and "
                                         "preprocessing become the defaults")
    sync_bn: bool = _f(False, "convert BatchNorm to SyncBatchNorm when running on several processes")
    # ---- optimisation
    per_device_batch_size: int = _f(256, "images per device per micro-step")
    gradient_accumulation_steps: int = _f(1, "micro-steps per optimizer step")
    max_steps: int | None = _f(None, "optimizer steps (overrides num_epochs)")
    num_epochs: float | None = _f(None, "epochs over the train split")
    learning_rate: float = _f(0.03, "peak learning rate (x global_batch/256 with --scale_lr)")
    scale_lr: bool = _f(False, "multiply learning_rate by global_batch/256")
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule")
    lr_schedule: str = _f("cosine", "cosine | constant", choices=["cosine", "constant"])
    warmup_steps: int | None = _f(None, "linear warmup steps")
    warmup_epochs: float | None = _f(None, "linear warmup epochs")
    optimizer: str = _f("sgd", "sgd | adamw | lars", choices=["sgd", "adamw", "lars"])
    weight_decay: float = _f(1e-4, "weight decay")
    sgd_momentum: float = _f(0.9, "SGD/LARS momentum")
    nesterov: bool = _f(False, "Nesterov momentum for SGD/LARS (the MoCo recipes use plain momentum)")
    lars_trust_coeff: float | None = _f(None, "LARS trust coefficient eta (timm default 0.001)")
    lars_trust_clip: bool = _f(False, "LARS: clip the trust ratio at 1 (LARC; EMP-SSL's LARSWrapper clip=True)")
    adam_betas: list | None = _f(None, "JSON [beta1, beta2] for AdamW")
    exclude_bias_norm_wd: bool = _f(False, "no weight decay on biases and norm parameters")
    max_grad_norm: float | None = _f(None, "clip gradients to this norm")
    # ---- run
    output_dir: str = _f("runs/moco", "run directory")
    seed: int = _f(0, "seed for model init, data order and augmentation")
    checkpointing_steps: int = _f(500, "save a resumable checkpoint every N steps (0 = only at the end)")
    save_total_limit: int = _f(2, "checkpoints kept")
    resume_from_checkpoint: str | None = _f(None, "PATH or 'latest'")
    export_encoder: bool = _f(True, "export the trained backbone to <output_dir>/encoder in timm's Hub format "
                                    "(--no-export_encoder to skip)")
    push_to_hub: bool = _f(False, "upload the finished run (model, code, card; encoder to <id>-encoder) to the Hub")
    hub_model_id: str | None = _f(None, "org/name of the Hub repo for --push_to_hub")
    hub_private: bool = _f(False, "create the Hub repo as private")
    report_to: str = _f("tensorboard", "tensorboard | wandb | trackio | all | none (comma list)")
    logging_steps: int = _f(10, "log every N steps")
    knn_every: int = _f(0, "evaluate every N steps: kNN for SSL methods, top-1 for classifiers (0 = only at "
                           "the end, -1 = never); alias --eval_every", alias="--eval_every")
    image_every: int = _f(500, "write pictures (views, mixed samples, AutoMix masks) every N steps "
                               "(0 = only at the end, -1 = never)")
    image_count: int = _f(8, "images per picture row")
    knn_k: int = _f(200, "kNN neighbours")
    knn_t: float = _f(0.1, "kNN temperature")
    knn_train_samples: int | None = _f(None, "cap the kNN memory bank")
    knn_test_samples: int | None = _f(None, "cap the kNN test set")

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_steps", "num_epochs",
                     "learning_rate", "logging_steps", "knn_k", "knn_t", "save_total_limit"):
            positive(name)
        positive("cpu_threads")
        for name in ("weight_decay", "min_lr", "checkpointing_steps", "num_workers", "warmup_steps", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (org/name)")
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("set max_steps or num_epochs")


MODEL_FIELDS = (
    "backbone", "backbone_kwargs", "cifar_stem", "image_size", "image_mean", "image_std", "proj_hidden_dim",
    "proj_dim", "proj_num_layers", "pred_hidden_dim", "tau", "queue_size", "momentum", "momentum_schedule",
    "symmetric", "shuffle_bn", "bn_splits", "freeze_patch_embed", "eval_features", "unmix", "unmix_global_prob",
    "unmix_beta", "mix_modes", "mix_probs", "mix_alpha", "num_labels", "label_smoothing", "mixblock_stage",
    "lam_concat", "mask_loss_weight", "mask_loss_schedule", "lam_margin", "momentum_final", "momentum_start",
    "mixblock_lr_scale", "mask_ratio", "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "norm_pix_loss",
    "feature_pool", "num_patches", "crop_scale", "tcr_eps", "invariance_weight", "tcr_weight", "eval_patches",
    "hidden_dim", "z_dim",
)


def _arg_type(tp: Any):
    """argparse settings for a dataclass field type (``X | None`` unwrapped; dict/list parsed as JSON)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base in (dict, list):
        return {"type": json.loads}
    return {"type": base}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Pretrain a hf_mixssl model (launch with `accelerate launch scripts/pretrain.py ...`).",
        argument_default=argparse.SUPPRESS,  # only flags actually given override the lower layers
    )
    hints = typing.get_type_hints(PretrainArguments)
    for f in dataclasses.fields(PretrainArguments):
        kw = _arg_type(hints[f.name])
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if "nargs" in f.metadata:  # space-separated values: --mix_modes mixup cutmix
            kw = {"nargs": f.metadata["nargs"], "type": f.metadata["item_type"]}
        names = [f"--{f.name}"] + ([f.metadata["alias"]] if "alias" in f.metadata else [])
        parser.add_argument(*names, dest=f.name, help=f"{f.metadata['help']} (default: {f.default})", **kw)
    return parser


def load_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config file {path!r} does not exist")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is reported with the file name
        raise ValueError(f"cannot parse --config file {path!r}: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"--config file {path!r} must hold a mapping of argument names to values")
    return values


def parse_args(argv: list[str] | None = None) -> tuple[PretrainArguments, dict[str, Any]]:
    """CLI -> resolved :class:`PretrainArguments` plus the extra per-method values (e.g. ``views``)."""
    cli = vars(build_parser().parse_args(argv))
    file_values = load_config_file(cli["config"]) if "config" in cli else {}
    method = cli.get("method", file_values.get("method"))
    preset = cli.get("preset", file_values.get("preset"))
    merged = resolve_defaults(method, preset)
    merged.update(file_values)
    merged.update(cli)
    return resolve(merged)


def resolve(values: dict[str, Any]) -> tuple[PretrainArguments, dict[str, Any]]:
    """Split merged values into known arguments and the rest; unknown keys are errors."""
    names = {f.name for f in dataclasses.fields(PretrainArguments)}
    known = {k: v for k, v in values.items() if k in names}
    extra = {k: v for k, v in values.items() if k not in names}
    unknown = set(extra) - {"version"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; see --help")
    args = PretrainArguments(**known)
    args.validate()
    return args, extra
