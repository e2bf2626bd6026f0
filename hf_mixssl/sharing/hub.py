"""Sharing: what a saved model directory needs so that others can load it, the timm encoder export, and the
upload of a run to the Hub with ``HfApi`` (never the deprecated ``Repository``).

A push stages exactly the files loading needs (config, weights, the modeling code for ``trust_remote_code``, a
freshly rendered model card, the run's results and arguments) in a temporary directory and uploads that, so the
run directory is never written to: a failed or interrupted upload leaves it byte-identical.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from torch import nn


def export_encoder(
    encoder: nn.Module,
    out_dir: str | Path,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    provenance: dict | None = None,
) -> Path:
    """Save a timm model in timm's Hub format (``config.json`` + ``model.safetensors``), atomically.

    Its ``pretrained_cfg`` describes this run, not the architecture's stock ImageNet weights: the input size,
    interpolation and crop of the run's evaluation transform (``hf_mixssl.data.views.eval_transform``: bilinear
    resize, and a 224/256 center crop above 64 px), its mean and std, and hf_mixssl provenance
    (``provenance``: method, model type, run) instead of timm's ``paper_ids`` / ``origin_url`` / ``hf_hub_id``.

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
    cfg = config.setdefault("pretrained_cfg", {})
    for key in ("tag", "paper_ids", "paper_name", "origin_url", "hf_hub_id", "hf_hub_filename", "url", "notes",
                "license", "file"):  # they name the architecture's stock weights, not these
        cfg.pop(key, None)
    provenance = dict(provenance or {})
    cfg.update(input_size=[3, image_size, image_size], interpolation="bilinear", mean=list(mean), std=list(std),
               crop_pct=1.0 if image_size <= 64 else 224 / 256, crop_mode="center", num_classes=0,
               license="apache-2.0", description=f"encoder trained with hf_mixssl ({provenance.get('method', '?')})",
               notes=[f"{k}: {v}" for k, v in provenance.items()])
    config["hf_mixssl"] = provenance  # timm reads only its own keys; this one says where the weights come from
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
    from ..methods import method_of_config

    try:
        method = method_of_config(config.to_dict()).name
    except ValueError:
        method = config.model_type
    provenance = {"library": "hf_mixssl", "method": method, "model_type": config.model_type,
                  "run": Path(out_dir).resolve().parent.name}
    return export_encoder(model.get_encoder(), out_dir, image_size=config.image_size, mean=config.image_mean,
                          std=config.image_std, provenance=provenance)


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


logger = logging.getLogger("hf_mixssl")

#: Files of a run directory a Hub repo carries besides the weights (``model*.safetensors`` and their index)
#: and the ``*.py`` modeling code.
RUN_FILES = ("config.json", "model.safetensors.index.json", "eval_results.json", "training_args.json",
             "preprocessor_config.json",
             "published_curve.png")  # the card's picture, when the run's preset has published numbers


class PushError(RuntimeError):
    """An upload failed; the message says why. The local run directory is untouched."""


def run_files(run_dir: str | Path) -> list[Path]:
    """The files of ``run_dir`` that loading the model needs, checked: config, weights and the modeling code."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise ValueError(f"{run} has no config.json: not a saved hf_mixssl run (save_pretrained output)")
    weights = sorted(run.glob("model*.safetensors"))
    if not weights:
        raise ValueError(f"{run} has no model*.safetensors weights")
    config = json.loads((run / "config.json").read_text())
    code = sorted(run.glob("*.py"))
    for ref in (config.get("auto_map") or {}).values():
        module = ref.split("--")[-1].split(".")[0] + ".py"
        if not (run / module).is_file():
            raise ValueError(f"{run}: config.json auto_map names {ref!r} but {module} is missing")
    return sorted(weights + code + [run / f for f in RUN_FILES if (run / f).is_file()])


def _transient(error: Exception) -> bool:
    """Worth retrying: connection problems, timeouts, 429 and 5xx answers."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status == 429 or status >= 500
    return isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in (
        "ConnectError", "ReadTimeout", "WriteTimeout", "ConnectTimeout", "RemoteProtocolError", "ReadError")


def with_retries(fn: Callable[[], object], *, what: str, attempts: int = 3, delay: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep):
    """``fn()``, retried with exponential backoff on transient errors; raises :class:`PushError` naming ``what``."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below, re-raised as PushError with the cause
            if not _transient(e) or attempt == attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise PushError(f"{what} failed{tries}: {type(e).__name__}: {e}") from e
            logger.warning("%s failed (%s: %s); retrying in %.0f s", what, type(e).__name__, e, delay)
            sleep(delay)
            delay *= 2


def _stage(files: Iterable[Path], root: Path) -> None:
    for f in files:
        target = root / f.name
        try:
            os.link(f, target)  # no copy of large weights when the temp dir is on the same filesystem
        except OSError:
            shutil.copy2(f, target)


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    encoder_repo_id: str | None = None,
    api=None,
    attempts: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Create ``repo_id`` (if needed) and upload the run's model, card and code; optionally the timm encoder.

    Returns ``{"model": url[, "encoder": url]}``. Raises ``ValueError`` for a run dir that cannot be loaded and
    :class:`PushError` when the Hub refuses or keeps failing (after ``attempts`` tries for transient errors).
    """
    from huggingface_hub import HfApi

    from .cards import render_model_card

    run = Path(run_dir)
    files = run_files(run)
    encoder_dir = run / "encoder"
    if encoder_repo_id and not (encoder_dir / "config.json").is_file():
        raise ValueError(f"{run} has no exported encoder (encoder/config.json) to push to {encoder_repo_id}")
    api = api or HfApi(token=token)
    urls = {}
    with tempfile.TemporaryDirectory(prefix="hf_mixssl_push_") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        _stage(files, staging)
        render_model_card(run, repo_id=repo_id).save(staging / "README.md")
        targets = [(repo_id, staging, "model")]
        if encoder_repo_id:
            enc_staging = Path(tmp) / "encoder"
            enc_staging.mkdir()
            _stage([encoder_dir / "config.json", encoder_dir / "model.safetensors"], enc_staging)
            (enc_staging / "README.md").write_text(
                f"---\nlibrary_name: timm\nlicense: apache-2.0\ntags:\n- hf_mixssl\n- image-feature-extraction\n---\n\n"
                f"# {encoder_repo_id.split('/')[-1]}\n\nThe encoder of [{repo_id}](https://huggingface.co/{repo_id}) "
                f"in timm's format:\n\n```python\nimport timm\nencoder = timm.create_model(\"hf-hub:{encoder_repo_id}\", "
                f"pretrained=True)\n```\n\nSee the main repository's card for the training recipe and results.\n")
            targets.append((encoder_repo_id, enc_staging, "encoder"))
        for target_id, folder, kind in targets:
            with_retries(lambda: api.create_repo(target_id, private=private, exist_ok=True, repo_type="model"),
                         what=f"creating {target_id}", attempts=attempts, sleep=sleep)
            if revision:
                with_retries(lambda: api.create_branch(target_id, branch=revision, exist_ok=True),
                             what=f"creating branch {revision} of {target_id}", attempts=attempts, sleep=sleep)
            commit = with_retries(
                lambda: api.upload_folder(repo_id=target_id, folder_path=str(folder), revision=revision,
                                          commit_message=f"Upload {run.name} ({kind}) with hf_mixssl"),
                what=f"uploading {run} to {target_id}", attempts=attempts, sleep=sleep)
            urls[kind] = str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{target_id}")
    return urls
