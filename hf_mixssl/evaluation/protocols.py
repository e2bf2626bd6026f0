"""Feature extraction, the weighted kNN monitor and the linear probe; metrics go through shipped ``evaluate``
modules.

Weighted kNN as in InstDisc (Wu et al., 2018) and the MoCo CIFAR Colab: cosine similarity of
L2-normalised features, the top ``k`` training neighbours vote for their class with weight
``exp(sim / T)``, and the class with the largest summed weight wins.

Linear probes (the quick cached one and the official augmented ones) are in :mod:`.probes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.momentum import cosine_anneal

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def load_metric(name: str = "accuracy"):
    """Load a metric module shipped in ``hf_mixssl/metrics/<name>`` by path (no Hub access)."""
    import evaluate

    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"no shipped metric named {name!r}; available: {sorted(p.name for p in METRICS_DIR.iterdir())}")
    return evaluate.load(str(path))


@torch.no_grad()
def extract_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: str | None = None,
    allow_empty: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run ``features_fn`` over ``{"pixel_values", "labels"}`` batches -> ``(feats [N, D] fp32, labels [N])``.

    ``progress`` names a progress bar (none when ``None``). No batches is an error, or ``(None, None)`` with
    ``allow_empty`` (a rank whose share of a small split is empty)."""
    from tqdm.auto import tqdm

    feats, labels = [], []
    device = torch.device(device)
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch", dynamic_ncols=True):
        x = batch["pixel_values"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            f = features_fn(x)
        feats.append(f.float().cpu())
        labels.append(batch["labels"].cpu())
    if not feats:
        if allow_empty:
            return None, None
        raise ValueError("no batches to extract features from")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    *,
    num_classes: int,
    knn_k: int = 200,
    knn_t: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN class prediction.

    ``score[c] = sum_{j in topk(sim)} exp(sim_j / T) * [label_j == c]``, ``sim = <q/|q|, b/|b|>``.

    Args:
        query: ``[N, D]`` features to classify.
        bank: ``[M, D]`` training features.
        bank_labels: ``[M]`` class indices in ``[0, num_classes)``.
    Returns:
        ``[N]`` predicted classes.
    """
    if knn_k <= 0 or knn_t <= 0:
        raise ValueError(f"knn_k and knn_t must be positive, got knn_k={knn_k}, knn_t={knn_t}")
    bank = F.normalize(bank.float(), dim=1)
    k = min(knn_k, bank.shape[0])
    preds = []
    for q in F.normalize(query.float(), dim=1).split(chunk_size):
        sim, idx = (q @ bank.t()).topk(k, dim=1)  # [n, k]
        weights = (sim / knn_t).exp()
        one_hot = F.one_hot(bank_labels[idx], num_classes).float()  # [n, k, C]
        scores = (one_hot * weights.unsqueeze(-1)).sum(dim=1)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor,
    *, knn_k: int = 200, knn_t: float = 0.1, num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict`, computed by the shipped ``evaluate`` accuracy module."""
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise ValueError("kNN evaluation needs labelled data: the dataset has no label column")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    preds = knn_predict(test_feats, train_feats, train_labels, num_classes=num_classes, knn_k=knn_k, knn_t=knn_t)
    metric = load_metric("accuracy")
    return float(metric.compute(predictions=preds.tolist(), references=test_labels.tolist())["accuracy"])


def default_eval_split(dataset: str, name: str | None = None) -> str:
    """The split to evaluate on: ``test``, else ``validation`` / ``valid`` / ``val``."""
    from datasets import get_dataset_split_names

    names = get_dataset_split_names(dataset, name)
    for candidate in ("test", "validation", "valid", "val"):
        if candidate in names:
            return candidate
    raise ValueError(f"dataset {dataset!r} has no test/validation split ({names}); pass --eval_split, or "
                     f"--train_val_split to hold out part of the training split")


def gather_rows(t: torch.Tensor | None, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Concatenate every rank's ``t: [n_rank, ...]`` (sizes may differ; ``None`` = no rows) in rank order, on
    every rank, on the CPU; ``t`` itself on one process. The collective runs on ``device`` (NCCL needs CUDA)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    metas: list = [None] * world  # (rows, trailing shape, dtype) per rank; an empty rank takes the others' shape
    dist.all_gather_object(metas, None if t is None else (t.shape[0], tuple(t.shape[1:]), t.dtype))
    known = [m for m in metas if m is not None]
    if not known:
        return None
    _, shape, dtype = known[0]
    rows = [0 if m is None else m[0] for m in metas]
    padded = torch.zeros((max(rows), *shape), dtype=dtype, device=device)
    if t is not None:
        padded[: t.shape[0]] = t.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, rows)]).cpu()


def evaluation_problem(dataset: str, name: str | None, *, train_split: str, eval_split: str | None,
                       label_column: str | None) -> str | None:
    """Why this dataset cannot be evaluated (no test/validation split, no labels), or ``None`` when it can."""
    from ..data.stream import detect_label_column, load_split

    try:
        split = eval_split or default_eval_split(dataset, name)
    except ValueError as e:
        return str(e)
    for s in (train_split, split):
        ds = load_split(dataset, s, name=name)
        columns = list(ds.column_names or (ds.features or {}).keys())
        if label_column is not None and label_column not in columns:
            return f"label_column {label_column!r} is not a column of split {s!r} ({columns})"
        if label_column is None and detect_label_column(ds.features, columns) is None:
            return f"split {s!r} of dataset {dataset!r} has no label column ({columns}); pass --label_column"
    return None


@dataclass
class EvalData:
    """Where and how evaluation reads images: deterministic eval transform at the model's resolution.

    With ``world_size > 1`` every rank extracts its share of a split (``split_dataset_by_node``) and the outputs
    are gathered on every rank, so no rank waits at a barrier while one extracts a whole split (NCCL's timeout
    kills such runs). ``limit`` rows are then ``ceil(limit / world_size)`` per rank.
    """

    dataset: str
    dataset_config: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    batch_size: int = 256
    num_workers: int = 0
    device: torch.device | str = "cpu"
    autocast_dtype: torch.dtype | None = None
    progress: bool = False  # progress bars (the scripts); the trainer's monitor stays quiet
    # Keep each (fn, split, limit) result: a script evaluating one fixed model with several protocols (kNN and a
    # linear probe) extracts its features once. Off for the trainer, whose model changes between evaluations.
    reuse: bool = False
    rank: int = 0
    world_size: int = 1
    _results: dict = field(default_factory=dict, repr=False)

    def split_or_default(self, split: str | None) -> str:
        return split or default_eval_split(self.dataset, self.dataset_config)

    def run(self, model, fn: Callable[[torch.Tensor], torch.Tensor], split: str, limit: int | None, *,
            interpolation: str = "bilinear"):
        """``fn`` over one pass of ``split`` (at most ``limit`` rows) in eval mode -> ``(outputs, labels)``."""
        key = (fn, split, limit, interpolation)
        if self.reuse and key in self._results:
            return self._results[key]
        result = self._run(model, fn, split, limit, interpolation)
        if self.reuse:
            self._results[key] = result
        return result

    def _run(self, model, fn: Callable[[torch.Tensor], torch.Tensor], split: str, limit: int | None,
             interpolation: str):
        from ..data.stream import ImageStream
        from ..data.views import eval_transform

        config = model.config
        tf = eval_transform(size=config.image_size, mean=config.image_mean, std=config.image_std,
                            interpolation=interpolation)
        per_rank = None if limit is None else -(-limit // self.world_size)
        stream = ImageStream(
            self.dataset, split, tf, self.batch_size, name=self.dataset_config, image_column=self.image_column,
            label_column=self.label_column, shuffle=False, infinite=False, max_samples=per_rank,
            num_workers=self.num_workers, rank=self.rank, world_size=self.world_size,
        )
        was_training = model.training
        model.eval()
        try:
            outputs, labels = extract_features(
                fn, stream.on_device(self.device), device=self.device, autocast_dtype=self.autocast_dtype,
                progress=f"features ({split})" if self.progress else None, allow_empty=self.world_size > 1)
        finally:
            model.train(was_training)
        outputs, labels = gather_rows(outputs, self.device), gather_rows(labels, self.device)
        if outputs is None:
            raise ValueError(f"split {split!r} of dataset {self.dataset!r} gave no usable images to evaluate")
        return outputs, labels


def knn_evaluate(
    model,
    data: EvalData,
    *,
    train_split: str = "train",
    eval_split: str | None = None,
    train_samples: int | None = None,
    test_samples: int | None = None,
    knn_k: int = 200,
    knn_t: float = 0.1,
) -> dict[str, float]:
    """Weighted kNN top-1 of ``model.extract_features`` (train split = memory bank, eval split = queries).

    Train features are computed under the test transform, as in InstDisc / MoCo.
    """
    train_f, train_y = data.run(model, model.extract_features, train_split, train_samples)
    test_f, test_y = data.run(model, model.extract_features, data.split_or_default(eval_split), test_samples)
    top1 = knn_accuracy(train_f, train_y, test_f, test_y, knn_k=knn_k, knn_t=knn_t)
    return {"knn_top1": top1, "knn_train_samples": len(train_y), "knn_test_samples": len(test_y)}


def accuracy_evaluate(
    model,
    data: EvalData,
    *,
    eval_split: str | None = None,
    test_samples: int | None = None,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    key: str = "top1",
) -> dict[str, float]:
    """Top-1 accuracy of a classifier's logits on the eval split, through the shipped ``evaluate`` module.

    ``logits_fn(x) -> [B, num_labels]`` defaults to ``model(pixel_values=x).logits``; the result is ``{key: top1}``.
    """
    logits_fn = logits_fn or (lambda x: model(pixel_values=x).logits)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return logits_fn(x).argmax(dim=1, keepdim=True)

    preds, labels = data.run(model, predict, data.split_or_default(eval_split), test_samples)
    if (labels < 0).any():
        raise ValueError("accuracy evaluation needs labelled data: the dataset has no label column")
    top1 = load_metric("accuracy").compute(predictions=preds[:, 0].long().tolist(), references=labels.tolist())
    return {key: float(top1["accuracy"]), "eval_samples": len(labels)}


@torch.no_grad()
def topk_accuracies(logits: torch.Tensor, labels: torch.Tensor, *, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of ``logits [N, C]`` through the shipped ``top_k_accuracy`` module
    (``k`` values above ``C`` are skipped)."""
    metric = load_metric("top_k_accuracy")
    k_max = min(max(ks), logits.shape[1])
    ranked = logits.float().topk(k_max, dim=1).indices.tolist()
    refs = labels.tolist()
    return {f"top{k}": float(metric.compute(predictions=ranked, references=refs, k=k)["top_k_accuracy"])
            for k in ks if k <= logits.shape[1]}


def finetune_evaluate(
    model,
    data: EvalData,
    *,
    train_split: str = "train",
    eval_split: str | None = None,
    train_samples: int | None = None,
    test_samples: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune a copy of ``model.get_encoder()`` with a new linear head; top-1/top-5 on the eval split.

    Training views are the classification recipe (pad-and-crop + flip at <= 64 px, else Inception crop + flip)
    at the model's resolution and normalisation; SGD (Nesterov, momentum 0.9), cosine per step from ``lr`` to 0,
    cross-entropy, BatchNorm in training mode. The model itself is not modified.
    """
    import copy

    from tqdm.auto import tqdm

    from ..models.backbones import pooled_features
    from ..data.stream import ImageStream, count_classes, count_rows
    from ..data.views import view_transform

    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {lr}")
    config = model.config
    device = torch.device(data.device)
    num_classes = count_classes(data.dataset, train_split, name=data.dataset_config, label_column=data.label_column)
    encoder = copy.deepcopy(model.get_encoder()).to(device).requires_grad_(True).train()
    torch.manual_seed(seed)
    head = nn.Linear(encoder.num_features, num_classes).to(device)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    views = view_transform("classify", size=config.image_size, mean=config.image_mean, std=config.image_std)

    def stream(epoch: int) -> ImageStream:
        return ImageStream(data.dataset, train_split, views, batch_size, name=data.dataset_config,
                           image_column=data.image_column, label_column=data.label_column, shuffle=True,
                           seed=seed + epoch, infinite=False, max_samples=train_samples,
                           num_workers=data.num_workers)

    rows = min(count_rows(data.dataset, train_split, name=data.dataset_config), train_samples or 1 << 62)
    total = max(1, epochs * (rows // batch_size))
    step = 0
    bar = tqdm(total=total, desc="fine-tune", disable=not data.progress, dynamic_ncols=True)
    for epoch in range(epochs):
        for batch in stream(epoch).on_device(device):
            x, y = batch["pixel_values"][:, 0], batch["labels"]
            for group in opt.param_groups:
                group["lr"] = cosine_anneal(step / total, start=lr, end=0.0)
            with torch.autocast(device.type, dtype=data.autocast_dtype, enabled=data.autocast_dtype is not None):
                loss = F.cross_entropy(head(pooled_features(encoder, x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()

    class _Classifier(nn.Module):  # what data.run puts in eval mode
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head, self.config = encoder, head, config

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(pooled_features(self.encoder, x))

    classifier = _Classifier()
    logits, labels = data.run(classifier, classifier, data.split_or_default(eval_split), test_samples)
    acc = topk_accuracies(logits, labels)
    return {**{f"finetune_{k}": v for k, v in acc.items()}, "finetune_epochs": epochs, "finetune_steps": step,
            "finetune_test_samples": len(labels)}
