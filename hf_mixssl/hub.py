"""Sharing: what a saved model directory needs so that others can load it, and the encoder export.

(Model-card rendering and Hub upload are planned here too; see the open sharing issue.)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import nn


def record_auto_classes(config, model_cls: type, auto_classes: Iterable[str]) -> None:
    """Pre-register ``model_cls`` under several Auto classes in ``config.auto_map``.

    ``save_pretrained`` writes only the model's own ``_auto_class`` into ``auto_map``; entries already present
    are kept, so recording the others here lets ``trust_remote_code=True`` resolve every one of them.
    """
    module = model_cls.__module__.rsplit(".", 1)[-1]
    auto_map = dict(getattr(config, "auto_map", None) or {})
    for name in auto_classes:
        auto_map.setdefault(name, f"{module}.{model_cls.__name__}")
    config.auto_map = auto_map


def export_encoder(
    encoder: nn.Module,
    out_dir: str | Path,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Path:
    """Save a timm model in timm's Hub format (``config.json`` + ``model.safetensors``), atomically.

    ``timm.create_model("local-dir:OUT")`` / ``"hf-hub:org/name"`` and transformers' ``AutoModel``
    (``TimmWrapperModel``) load the result with no hf_mixssl code. timm records ``num_classes=0`` in
    ``model_args``; transformers' TimmWrapper passes ``num_classes`` itself and fails on the duplicate, so
    that key is dropped (the top-level ``num_classes: 0`` still tells timm the model is headless).
    """
    from timm.models import save_for_hf

    out = Path(out_dir)
    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data_config = {"input_size": (3, image_size, image_size), "mean": tuple(mean), "std": tuple(std)}
    save_for_hf(encoder, str(tmp), safe_serialization=True, data_config=data_config)
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    config.get("pretrained_cfg", {}).pop("tag", None)  # names the architecture's stock weights, not these
    config_path.write_text(json.dumps(config, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_model_encoder(model, out_dir: str | Path) -> Path | None:
    """Export ``model.get_encoder()`` with :func:`export_encoder`; ``None`` when timm cannot rebuild it.

    A CIFAR stem (3x3 stride-1 conv, no max-pool) is not expressible in timm's ``model_args``, so such
    backbones are not exported (``AutoModel`` on the run dir still loads them).
    """
    config = model.config
    if getattr(config, "cifar_stem", False) or not hasattr(model, "get_encoder"):
        return None
    return export_encoder(model.get_encoder(), out_dir, image_size=config.image_size, mean=config.image_mean,
                          std=config.image_std)


def read_encoder_export(path: str | Path) -> tuple[dict, Path]:
    """``(timm config.json dict, weights file)`` of an exported encoder dir, or of a run dir's ``encoder/``."""
    root = Path(path)
    if not (root / "config.json").is_file() or "architecture" not in json.loads((root / "config.json").read_text()):
        root = root / "encoder"
    config_path, weights = root / "config.json", root / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise ValueError(f"{path} is neither an exported timm encoder (config.json with 'architecture' + "
                         f"model.safetensors) nor a run dir holding one in encoder/")
    config = json.loads(config_path.read_text())
    if "architecture" not in config:
        raise ValueError(f"{config_path} has no 'architecture' field: not a timm export")
    return config, weights
