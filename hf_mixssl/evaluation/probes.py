"""The linear probes papers report, as named recipes (``scripts/evaluate.py --protocol linear --linear_probe NAME``).

| name | source | head | training data | optimiser and schedule |
|---|---|---|---|---|
| ``quick`` | ours (MAE's head) | BN(affine=False) + Linear, N(0, 0.01) | cached features, no augmentation | SGD 0.1, cosine per step, 100 ep, B 256 |
| ``emp_ssl`` | tsb0601/EMP-SSL ``func.py`` ``linear`` | plain Linear, PyTorch init | cached features | SGD 0.03, wd 5e-5, cosine per epoch, 100 ep, B 100 |
| ``moco`` | facebookresearch/moco ``main_lincls.py`` | Linear, N(0, 0.01) | RandomResizedCrop + flip per step | SGD 30, x0.1 at epochs 60 and 80, 100 ep, B 256 |
| ``mae`` | facebookresearch/mae ``main_linprobe.py`` | BN(affine=False, eps 1e-6) + Linear, trunc N(0, 0.01) | MAE's RandomResizedCrop (bicubic) + flip | LARS, 0.1 x B/256, 10 warmup + cosine per step, 90 ep, B 16384 |

The augmented probes run the frozen encoder (eval mode, no gradient: BatchNorm statistics never move, as
``main_lincls.py``'s ``model.eval()``) on fresh views every step and evaluate on Resize(size x 256/224) +
CenterCrop (bicubic for ``mae``). Their features are the model's ``extract_features`` (MAE: its ``feature_pool``;
the official MAE probe uses the [cls] token, ``--feature_pool cls``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ProbeRecipe:
    """One linear-probe protocol. ``lr`` is absolute, or a base lr x ``batch_size / 256`` when ``scale_lr``;
    ``milestones`` (epochs) give a x0.1 step schedule, otherwise cosine after ``warmup_epochs``."""

    name: str
    source: str
    augmented: bool
    epochs: int
    batch_size: int
    lr: float
    scale_lr: bool = False
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = ()
    lr_by_epoch: bool = False
    head_bn: bool = True
    init: str = "normal"  # "normal" | "trunc_normal" (std 0.01) | "default" (PyTorch's Linear init)
    interpolation: str = "bilinear"
    mae_crop: bool = False


PROBES: dict[str, ProbeRecipe] = {
    "quick": ProbeRecipe("quick", "hf_mixssl (MAE's head on cached features)", False, 100, 256, 0.1),
    "emp_ssl": ProbeRecipe("emp_ssl", "tsb0601/EMP-SSL func.py linear()", False, 100, 100, 0.03, weight_decay=5e-5,
                           lr_by_epoch=True, head_bn=False, init="default"),
    "moco": ProbeRecipe("moco", "facebookresearch/moco main_lincls.py", True, 100, 256, 30.0, milestones=(60, 80),
                        head_bn=False),
    "mae": ProbeRecipe("mae", "facebookresearch/mae main_linprobe.py", True, 90, 16384, 0.1, scale_lr=True,
                       optimizer="lars", warmup_epochs=10, init="trunc_normal", interpolation="bicubic",
                       mae_crop=True),
}


def probe_key(name: str) -> str:
    """The prefix of a probe's result keys: ``linear`` for ``quick`` (``linear_top1``), ``linear_<name>`` otherwise."""
    return "linear" if name == "quick" else f"linear_{name}"


def get_probe(name: str) -> ProbeRecipe:
    if name not in PROBES:
        raise ValueError(f"unknown linear probe {name!r}; choose one of {sorted(PROBES)}")
    return PROBES[name]


# ----------------------------------------------------------------------------------------- pure pieces
def probe_learning_rate(recipe: ProbeRecipe, epoch: float, *, lr: float, epochs: int) -> float:
    """The lr at fractional ``epoch`` (``epoch + step / steps_per_epoch``).

    Step schedule (``main_lincls.py`` ``adjust_learning_rate``, once per epoch): ``lr * 0.1^#{m <= int(epoch)}``.
    Cosine (``mae/util/lr_sched.py``): ``lr * epoch / warmup`` during warmup, then
    ``lr * (1 + cos(pi * (epoch - warmup) / (epochs - warmup))) / 2``; with ``lr_by_epoch`` at the epoch's start
    (``CosineAnnealingLR(T_max=epochs)`` stepped per epoch, EMP-SSL).
    """
    if recipe.milestones:
        return lr * 0.1 ** sum(int(epoch) >= m for m in recipe.milestones)
    if recipe.lr_by_epoch:
        epoch = float(int(epoch))
    if epoch < recipe.warmup_epochs:
        return lr * epoch / recipe.warmup_epochs
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / (epochs - recipe.warmup_epochs)))


class LARS(torch.optim.Optimizer):
    """MAE's ``util/lars.py`` LARS: for parameters with more than one dimension,
    ``d = (grad + wd * p) * (trust * |p| / |grad + wd * p|)`` (1 where either norm is 0); 1-D parameters (biases,
    norms) take the raw gradient, no decay; then ``mu = momentum * mu + d``, ``p -= lr * mu``.

    Unlike timm's ``Lars``, the trust ratio applies even without weight decay (the MAE probe has ``wd = 0``).
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    ratio = torch.where((p_norm > 0) & (d_norm > 0), g["trust_coefficient"] * p_norm / d_norm,
                                        torch.ones_like(p_norm))
                    d = d.mul(ratio)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(g["momentum"]).add_(d)
                p.add_(mu, alpha=-g["lr"])


def mae_crop_params(height: int, width: int, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """MAE's ``util/crop.py`` ``RandomResizedCrop.get_params`` (BYOL's TF crop, no retry loop): area and log-aspect
    drawn once, the box clipped to the image, its corner uniform -> ``(top, left, h, w)``."""
    target_area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = min(int(round(math.sqrt(target_area * aspect))), width)
    h = min(int(round(math.sqrt(target_area / aspect))), height)
    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()
    return i, j, h, w


class MAERandomResizedCrop:
    """``PIL -> PIL``: :func:`mae_crop_params`, then resize to ``size x size`` with ``interpolation``."""

    def __init__(self, size: int, interpolation) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        from torchvision.transforms.v2 import functional as TF

        i, j, h, w = mae_crop_params(image.height, image.width)
        return TF.resized_crop(image, i, j, h, w, [self.size, self.size], interpolation=self.interpolation,
                               antialias=True)


def probe_views(recipe: ProbeRecipe, *, size: int, mean, std):
    """The probe's training views: RandomResizedCrop (torchvision's, or MAE's) + horizontal flip, ``uint8``."""
    from torchvision.transforms import v2

    from ..data.views import Views

    mode = v2.InterpolationMode(recipe.interpolation)
    crop = MAERandomResizedCrop(size, mode) if recipe.mae_crop else v2.RandomResizedCrop(
        size, interpolation=mode, antialias=True)
    return Views([v2.Compose([crop, v2.RandomHorizontalFlip(), v2.ToImage()])], mean=mean, std=std)


def probe_head(recipe: ProbeRecipe, dim: int, num_classes: int, *, generator: torch.Generator | None = None) -> nn.Module:
    """``[BatchNorm1d(dim, affine=False, eps=1e-6)] -> Linear(dim, num_classes)`` initialised as the recipe says."""
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        if recipe.init == "normal":
            linear.weight.normal_(0.0, 0.01, generator=generator)
        elif recipe.init == "trunc_normal":
            from timm.layers import trunc_normal_

            trunc_normal_(linear.weight, std=0.01)  # timm's, as main_linprobe.py (bounds +-2: a plain normal)
        if recipe.init != "default":
            linear.bias.zero_()
    if not recipe.head_bn:
        return linear
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def probe_optimizer(recipe: ProbeRecipe, params, *, lr: float) -> torch.optim.Optimizer:
    if recipe.optimizer == "lars":
        return LARS(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=recipe.weight_decay)


def probe_with(recipe: ProbeRecipe, *, epochs: int | None = None, **changes) -> ProbeRecipe:
    """The recipe with some settings changed (``batch_size``, ``lr``, ``weight_decay``: ``None`` keeps the
    recipe's); a different ``epochs`` keeps the milestones' and warmup's share of the run."""
    from dataclasses import replace

    recipe = replace(recipe, **{k: v for k, v in changes.items() if v is not None})
    if recipe.epochs <= 0 or recipe.batch_size <= 0 or recipe.lr <= 0:
        raise ValueError(f"linear probe epochs, batch size and lr must be positive, got {recipe.epochs}, "
                         f"{recipe.batch_size}, {recipe.lr}")
    if epochs is None or epochs == recipe.epochs:
        return recipe
    if epochs <= 0:
        raise ValueError(f"linear probe epochs must be positive, got {epochs}")
    f = epochs / recipe.epochs
    return replace(recipe, epochs=epochs, milestones=tuple(m * f for m in recipe.milestones),
                   warmup_epochs=recipe.warmup_epochs * f)


# ----------------------------------------------------------------------------------------- the probes
def train_cached_probe(recipe: ProbeRecipe, feats: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                       seed: int = 0) -> nn.Module:
    """Fit the recipe's head on cached ``[N, D]`` features: shuffled full batches (``drop_last``) from a seeded
    generator, cross-entropy, the recipe's optimiser and schedule. Global RNG state is left as it was."""
    if (labels < 0).any():
        raise ValueError("the linear probe needs labelled data: the dataset has no label column")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # PyTorch's default Linear init (EMP-SSL's head) draws from the global RNG
        head = probe_head(recipe, feats.shape[1], num_classes, generator=g)
    lr = peak_lr(recipe)
    opt = probe_optimizer(recipe, head.parameters(), lr=lr)
    n, batch = feats.shape[0], recipe.batch_size
    steps = max(1, n // batch)  # BatchNorm needs more than one sample
    head.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = probe_learning_rate(recipe, epoch + i / steps, lr=lr, epochs=recipe.epochs)
            idx = order[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(head(feats[idx].float()), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


def peak_lr(recipe: ProbeRecipe) -> float:
    """``lr``, or ``lr * batch_size / 256`` for a recipe with ``scale_lr`` (MAE)."""
    return recipe.lr * recipe.batch_size / 256 if recipe.scale_lr else recipe.lr


def linear_probe(model, data, *, recipe: ProbeRecipe, train_split: str = "train", eval_split: str | None = None,
                 train_samples: int | None = None, test_samples: int | None = None, seed: int = 0) -> dict:
    """Top-1/top-5 of ``recipe`` on the frozen ``model.extract_features``; keys ``linear_top1`` for ``quick``,
    ``linear_<name>_top1`` otherwise, with the settings used and ``..._official`` (false when any was changed)."""
    from .protocols import topk_accuracies

    test_split = data.split_or_default(eval_split)
    if recipe.augmented:
        head, train_rows = _train_augmented_probe(model, data, recipe, train_split=train_split, samples=train_samples,
                                                  seed=seed)
    else:
        feats, labels = data.run(model, model.extract_features, train_split, train_samples)
        head = train_cached_probe(recipe, feats, labels, num_classes=int(labels.max()) + 1, seed=seed)
        train_rows = len(labels)
    # the eval split's features (shared with kNN when the interpolation is the same), then the head
    test_f, test_y = data.run(model, model.extract_features, test_split, test_samples,
                              interpolation=recipe.interpolation)
    if (test_y < 0).any():
        raise ValueError("the linear probe needs labelled data: the dataset has no label column")
    with torch.no_grad():
        out = head.to(test_f.device).eval()(test_f.float())
    key = probe_key(recipe.name)
    acc = topk_accuracies(out, test_y)
    return {**{f"{key}_{k}": v for k, v in acc.items()}, f"{key}_train_samples": train_rows,
            f"{key}_test_samples": len(test_y), f"{key}_epochs": recipe.epochs, f"{key}_batch_size": recipe.batch_size,
            f"{key}_lr": peak_lr(recipe), f"{key}_source": recipe.source,
            f"{key}_official": recipe == PROBES[recipe.name]}


def _train_augmented_probe(model, data, recipe: ProbeRecipe, *, train_split: str, samples: int | None,
                           seed: int) -> tuple[nn.Module, int]:
    from tqdm.auto import tqdm

    from ..data.stream import ImageStream, count_classes, count_rows

    config, device = model.config, torch.device(data.device)
    num_classes = count_classes(data.dataset, train_split, name=data.dataset_config, label_column=data.label_column)
    views = probe_views(recipe, size=config.image_size, mean=config.image_mean, std=config.image_std)
    was_training = model.training
    model.eval()  # frozen: no BatchNorm statistic moves (main_lincls.py's model.eval())
    with torch.no_grad():
        dim = model.extract_features(torch.zeros(2, 3, config.image_size, config.image_size, device=device)).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # timm's trunc_normal_ (MAE's head) draws from the global RNG
        head = probe_head(recipe, dim, num_classes, generator=torch.Generator().manual_seed(seed)).to(device).train()
    lr, batch_size = peak_lr(recipe), recipe.batch_size
    opt = probe_optimizer(recipe, head.parameters(), lr=lr)
    rows = min(count_rows(data.dataset, train_split, name=data.dataset_config), samples or 1 << 62)
    steps = max(1, math.ceil(rows / batch_size))
    seen = 0
    bar = tqdm(total=recipe.epochs * steps, desc=f"linear probe ({recipe.name})", disable=not data.progress,
               dynamic_ncols=True)
    try:
        for epoch in range(recipe.epochs):
            stream = ImageStream(data.dataset, train_split, views, batch_size, name=data.dataset_config,
                                 image_column=data.image_column, label_column=data.label_column, shuffle=True,
                                 seed=seed + epoch, infinite=False, max_samples=samples, num_workers=data.num_workers)
            for i, b in enumerate(stream.on_device(device)):
                x, y = b["pixel_values"][:, 0], b["labels"]
                if (y < 0).any():
                    raise ValueError("the linear probe needs labelled data: the dataset has no label column")
                if x.shape[0] < 2 and recipe.head_bn:
                    continue  # BatchNorm cannot train on one sample
                for group in opt.param_groups:
                    group["lr"] = probe_learning_rate(recipe, epoch + min(i, steps - 1) / steps, lr=lr,
                                                      epochs=recipe.epochs)
                with torch.no_grad(), torch.autocast(device.type, dtype=data.autocast_dtype,
                                                     enabled=data.autocast_dtype is not None):
                    f = model.extract_features(x)
                loss = F.cross_entropy(head(f.float()), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += x.shape[0] if epoch == 0 else 0
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        bar.close()
        model.train(was_training)
    return head.eval(), seen
