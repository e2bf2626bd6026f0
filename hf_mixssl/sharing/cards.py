"""Model cards: one template per method in ``sharing/templates/`` (package data), rendered with ``huggingface_hub.ModelCard`` from a run
directory's real files (``config.json``, ``training_args.json``, ``eval_results.json``).

Nothing is a placeholder: every number comes from the run (results, parameter count, GMACs measured with
``torch.utils.flop_counter`` on one image); a run without evaluation results says so instead of inventing them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..evaluation.probes import PROBES, probe_key
from ..methods import method_of_config

TEMPLATES = Path(__file__).resolve().parent / "templates"
UNMIX_BIBTEX = (
    "@inproceedings{shen2022unmix,\n  title={Un-Mix: Rethinking Image Mixtures for Unsupervised Visual "
    "Representation Learning},\n  author={Shen, Zhiqiang and Liu, Zechun and Liu, Zhuang and Savvides, "
    "Marios and Darrell, Trevor and Xing, Eric},\n  booktitle={AAAI},\n  year={2022}\n}")

# eval_results.json scores -> metric names. Protocol scores may carry the feature choice as a prefix
# (backbone_knn_top1, cls_linear_top1); a classifier's own scores are exact keys.
_PROTOCOL_METRICS = {
    "knn_top1": "kNN top-1 (k={knn_k}, T={knn_t})",
    **{f"{probe_key(name)}_top{k}": f"quick linear-probe top-{k}" if name == "quick" else
       f"linear-probe top-{k} ({recipe.source})" for name, recipe in PROBES.items() for k in (1, 5)},
    "finetune_top1": "fine-tuned top-1",
    "finetune_top5": "fine-tuned top-5",
}
_CLASSIFIER_METRICS = {"top1": "top-1", "top1_online": "top-1 of the online encoder"}
_RECIPE_KEYS = ("method", "preset", "dataset", "global_batch_size", "per_device_batch_size",
                "gradient_accumulation_steps", "bn_group_size", "num_epochs", "max_steps", "optimizer", "learning_rate",
                "scale_lr", "weight_decay", "lr_schedule", "lr_by_epoch", "lr_decay_epochs", "min_lr", "warmup_epochs",
                "warmup_steps", "views", "min_crop_scale", "augment_on", "seed")


def _dataset_name(dataset: str) -> str:
    path = Path(dataset)
    return path.name if path.exists() else dataset


def results_of(evals: dict[str, Any]) -> list[tuple[str, str, float]]:
    """``[(key, metric name, value in %)]`` of this model's scores in ``eval_results.json`` (random-init
    baselines, counts and settings are left out)."""
    rows = []
    for key, value in evals.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or key.startswith("random_init_"):
            continue
        if key in _CLASSIFIER_METRICS:
            rows.append((key, _CLASSIFIER_METRICS[key], round(100.0 * float(value), 2)))
            continue
        for base, name in _PROTOCOL_METRICS.items():
            if key == base or key.endswith("_" + base):
                prefix = key[: -len(base)].rstrip("_").replace("_", " ")
                label = f"{name}, {prefix} features" if prefix else name
                rows.append((key, label, round(100.0 * float(value), 2)))
                break
    return rows


def run_curve(run: Path, metric: str) -> dict[float, float]:
    """``{epoch: value in %}`` of the run's monitor from ``train_log.jsonl`` (steps -> epochs by the logged epoch)."""
    path = run / "train_log.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    scale = next((r["epoch"] / r["step"] for r in reversed(rows) if r.get("epoch") and r.get("step")), None)
    if scale is None:
        return {}
    return {r["step"] * scale: 100.0 * r[metric] for r in rows if isinstance(r.get(metric), (int, float))}


def curve_picture(published: dict[float, float], ours: dict[float, float], *, title: str,
                  size: tuple[int, int] = (560, 340)):
    """A PIL line chart: the published numbers and this run's by epoch (log-scaled epochs, 0-100 %)."""
    import math

    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 48, 16, 28, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    epochs = [e for e in (*published, *ours) if e > 0] or [1.0]
    lo, hi = math.log10(min(epochs) / 1.5), math.log10(max(epochs) * 1.5)

    def xy(epoch: float, value: float) -> tuple[float, float]:
        x = left + (math.log10(max(epoch, 10 ** lo)) - lo) / (hi - lo) * (w - left - right)
        return x, top + (1 - value / 100) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in range(0, 101, 20):
        _, y = xy(1, v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((4, y - 6), f"{v}%", fill="black")
    for e in sorted({10 ** k for k in range(math.floor(lo), math.ceil(hi) + 1)} | set(published)):
        if 10 ** lo <= e <= 10 ** hi:
            x, _ = xy(e, 0)
            d.line([x, h - bottom, x, h - bottom + 4], fill="black")
            d.text((x - 8, h - bottom + 6), f"{e:g}", fill="black")
    d.text((left, 6), title, fill="black")
    d.text((w // 2 - 20, h - 16), "epoch", fill="black")
    for points, colour, name in ((published, (200, 30, 30), "published"), (ours, (30, 80, 200), "this run")):
        pts = [xy(e, v) for e, v in sorted(points.items()) if e > 0]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    d.text((w - right - 150, top + 6), "published", fill=(200, 30, 30))
    d.text((w - right - 150, top + 20), "this run", fill=(30, 80, 200))
    return img


PUBLISHED_PICTURE = "published_curve.png"


def write_published_curve(run_dir: str | Path) -> Path | None:
    """Draw the run's monitor beside its preset's published numbers into ``<run>/published_curve.png`` (when the
    run used a preset with published numbers in the same metric as its monitor)."""
    from ..train.presets import PUBLISHED

    run = Path(run_dir)
    args_path = run / "training_args.json"
    args = json.loads(args_path.read_text()) if args_path.is_file() else {}
    pub = PUBLISHED.get(args.get("preset") or "")
    if pub is None:
        return None
    ours = run_curve(run, pub.metric)
    if not ours:
        return None
    path = run / PUBLISHED_PICTURE
    curve_picture(pub.by_epoch, ours, title=f"{pub.metric} (%): {args['preset']} vs published ({pub.dataset})").save(path)
    return path


def published_section(run: Path, args: dict[str, Any], evals: dict[str, Any]) -> str:
    """Markdown: the preset's published numbers beside this run's (picture, then the table)."""
    from ..train.presets import PUBLISHED

    pub = PUBLISHED.get(args.get("preset") or "")
    if pub is None:
        return ""
    ours = run_curve(run, pub.metric)
    lines = [f"\n\n### Compared with the published numbers\n\nPreset `{args['preset']}`, source: {pub.source}. "
             f"Published {pub.metric} on {pub.dataset}" + (f"; differs: {pub.differs}" if pub.differs else "") + "."]
    if (run / PUBLISHED_PICTURE).is_file():
        lines.append(f"\n![{pub.metric}: this run and the published numbers]({PUBLISHED_PICTURE})")
    rows = [f"| {e:g} | {v:.2f} | |" for e, v in sorted(pub.by_epoch.items())]
    rows += [f"| {e:.2f} | | {v:.2f} |" for e, v in sorted(ours.items())]
    lines.append("\n| epoch | published (%) | this run (%) |\n|---|---|---|\n" + "\n".join(rows))
    return "\n".join(lines)


@torch.no_grad()
def count_gmacs(encoder: torch.nn.Module, image_size: int) -> float:
    """Multiply-accumulates (x1e9) of one forward of ``encoder`` on a ``1 x 3 x S x S`` image."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = encoder.training
    encoder.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            encoder(torch.zeros(1, 3, image_size, image_size, device=next(encoder.parameters()).device))
    finally:
        encoder.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def render_model_card(run_dir: str | Path, *, repo_id: str | None = None, model=None):
    """``ModelCard`` of a run directory (pass the loaded ``model`` to skip loading it again)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text())
    args_path, evals_path = run / "training_args.json", run / "eval_results.json"
    args = json.loads(args_path.read_text()) if args_path.is_file() else {}
    evals = json.loads(evals_path.read_text()) if evals_path.is_file() else {}
    method = method_of_config(config)
    key, paper = method.name, method.paper
    template = Path(method.card_template) if method.card_template.endswith(".md") else \
        TEMPLATES / f"{method.card_template}.md"
    if not template.is_file():
        raise ValueError(f"model card template {template} of method {key!r} is missing from the installed package")
    if model is None:
        import hf_mixssl  # noqa: F401  (registers the Auto classes)
        from transformers import AutoModel

        model = AutoModel.from_pretrained(run)
    encoder = model.get_encoder()
    params = sum(p.numel() for p in model.parameters())
    enc_params = sum(p.numel() for p in encoder.parameters())
    gmacs = count_gmacs(encoder, config["image_size"])

    dataset = args.get("dataset") or evals.get("dataset") or "unknown"
    dataset_name = _dataset_name(dataset)
    name = repo_id.split("/")[-1] if repo_id else run.name
    metrics = results_of(evals)
    fmt = {"knn_k": args.get("knn_k", 200), "knn_t": args.get("knn_t", 0.1)}
    eval_split = args.get("eval_split") or "test"
    task = "image-classification"
    eval_results = [EvalResult(task_type=task, dataset_type=dataset_name, dataset_name=dataset_name,
                               dataset_split=eval_split, metric_type="accuracy", metric_value=value,
                               metric_name=label.format(**fmt) + " (%)")
                    for _, label, value in metrics]
    unmix = bool(config.get("unmix"))
    tags = ["hf_mixssl", key.replace("_", "-"), "timm", "image-feature-extraction"]
    if unmix:
        tags.append("un-mix")
    if method.supervised:
        tags.append("image-classification")
    card_data = ModelCardData(
        library_name="transformers", license="apache-2.0", tags=tags, datasets=[dataset_name],
        metrics=["accuracy"], pipeline_tag=task if method.supervised else "image-feature-extraction",
        model_name=name, eval_results=eval_results or None,
    )
    if metrics:
        lines = ["| metric | value (%) |", "|---|---|"]
        lines += [f"| {label.format(**fmt)} | {value:.2f} |" for _, label, value in metrics]
        step = evals.get("global_step")
        results_table = "\n".join(lines) + (f"\n\nAfter {step} optimizer steps; evaluated on the `{eval_split}` "
                                            f"split of {dataset_name}." if step else "")
    else:
        results_table = "This run has no evaluation results yet (`eval_results.json` holds no score)."
    results_table += published_section(run, args, evals)
    model_details = "\n".join([
        f"- Backbone: timm `{config['backbone']}`" + (f" with `{config['backbone_kwargs']}`" if config.get(
            "backbone_kwargs") else "") + (", CIFAR stem (3x3 conv, no max-pool)" if config.get("cifar_stem") else ""),
        f"- Parameters: {params / 1e6:.2f} M in total, {enc_params / 1e6:.2f} M in the encoder",
        f"- Encoder compute: {gmacs:.3f} GMACs per {config['image_size']}x{config['image_size']} image",
        f"- Input: {config['image_size']} px, normalised with mean {config['image_mean']} and std {config['image_std']}",
        f"- Library: hf_mixssl, model type `{config['model_type']}` ({config.get('architectures', ['?'])[0]})",
    ])
    recipe_rows = [f"| `{k}` | `{args[k]}` |" for k in _RECIPE_KEYS if args.get(k) is not None]
    plan = args.get("resolved")
    if plan:  # what the run actually trained with on its world size
        recipe_rows += [
            f"| resolved batch | {plan['global_batch_size']} = {plan['per_device_batch_size']} per device x "
            f"{plan['num_processes']} process(es) x {plan['gradient_accumulation_steps']} accumulation |",
            f"| resolved peak learning rate | {plan['peak_learning_rate']:g} |"]
        if plan.get("bn_splits"):
            recipe_rows.append(f"| BatchNorm splits per device | {plan['bn_splits']} |")
    recipe = "\n".join(["| argument | value |", "|---|---|", *recipe_rows]) if recipe_rows else \
        "The run directory holds no `training_args.json`."
    command = args.get("command")
    if command:
        recipe += f"\n\nCommand:\n\n```bash\n{command}\n```"
    recipe += "\n\nEvery resolved argument and the model configuration are in `training_args.json`."
    repo = repo_id or str(run)
    has_encoder = (run / "encoder" / "config.json").is_file()
    usage = (
        "```python\nimport hf_mixssl  # registers the Auto classes\nfrom transformers import AutoModel\n\n"
        f"model = AutoModel.from_pretrained(\"{repo}\")\n"
        "features = model.extract_features(pixel_values)  # [B, D]\nencoder = model.get_encoder()  # a plain timm model\n"
        "```\n\nWithout hf_mixssl installed (the modeling code ships with the weights):\n\n```python\n"
        f"model = AutoModel.from_pretrained(\"{repo}\", trust_remote_code=True)\n```"
    )
    pipeline_task = "image-classification" if method.supervised else "image-feature-extraction"
    usage += ("\n\nWith a pipeline (the run's preprocessing is in `preprocessor_config.json`):\n\n```python\n"
              "from transformers import pipeline\n\n"
              f"pipe = pipeline(\"{pipeline_task}\", model=\"{repo}\", trust_remote_code=True)\n"
              + ("print(pipe(\"image.jpg\"))  # the dataset's class names with scores\n" if method.supervised else
                 "features = pipe(\"image.jpg\", return_tensors=True)  # [1, D], the encoder's pooled features\n")
              + "```")
    if has_encoder:
        enc = f"{repo}-encoder" if repo_id else f"{run}/encoder"
        scheme = "hf-hub" if repo_id else "local-dir"
        usage += (f"\n\nThe encoder alone, in timm's format (`encoder/`, pushed as `{enc}`):\n\n```python\nimport timm\n"
                  f"encoder = timm.create_model(\"{scheme}:{enc}\", pretrained=True)\n```")
    budget_bits = [f"{evals['global_step']} steps" if evals.get("global_step") else None,
                   f"{args['num_epochs']} epochs planned" if args.get("num_epochs") and not args.get("max_steps")
                   else None]
    budget = ", ".join(b for b in budget_bits if b) or "see training_args.json"
    limitations = "" if has_encoder or not config.get("cifar_stem") else (
        "- The CIFAR-stem backbone cannot be rebuilt from timm's config, so no timm-format encoder is exported; "
        "use `get_encoder()` on the loaded model.")
    # The template sees the model config's fields by name ({{ queue_size }}, {{ mask_ratio }}) and these.
    values = dict(
        config, model_name=name, method_name=paper.name, backbone=config["backbone"], dataset_name=dataset_name,
        results_table=results_table, model_details=model_details, recipe=recipe, usage=usage, budget=budget,
        limitations=limitations, paper_title=paper.title, paper_url=paper.url, official_repo=paper.repo,
        bibtex=paper.bibtex + ("\n\n" + UNMIX_BIBTEX if unmix else ""), unmix=unmix,
    )
    return ModelCard.from_template(card_data, template_path=str(template), **values)
