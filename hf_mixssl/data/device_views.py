"""View recipes split between the data workers and the training device (``--augment_on device``).

The workers only decode and take each view's crop at the target size (``RandomResizedCrop`` or the CIFAR
pad-and-crop, as :mod:`hf_mixssl.data.views`), as ``uint8`` in the decoded ``H x W x C`` layout (the transpose
to ``C x H x W`` costs a worker 0.12 ms an image and the device next to nothing), and draw every other random
parameter of the view
from the per-sample seeded generator: ``[flip, jitter?, brightness, contrast, saturation, hue, order x4, gray?,
blur?, sigma, solarize?]`` (:data:`PARAMS`). The device then applies flip, colour jitter (the four ops in each
sample's own order, as torchvision's ``ColorJitter``), grayscale, Gaussian blur, solarize and normalisation to
the whole batch at once (:func:`apply_ops`, generalising EMP-SSL's ``multipatch.py``). Views are reproducible per
sample and do not depend on the worker count, as on the CPU path.

Same distributions as the CPU recipes (and the official transforms); numerical differences: the colour ops run
in float32 on the device without re-quantising to 8 bits between ops (PIL works in uint8), the Gaussian blur is
an exact separable Gaussian of radius ``ceil(3 sigma)`` with reflect padding (PIL's ``GaussianBlur(radius=sigma)``
approximates it with three box blurs), hue uses torchvision's tensor formula (PIL converts through HSV in
uint8), and luma (grayscale, contrast, saturation) weighs R by PIL's 0.299 (torchvision's tensor ops: 0.2989).
Flip commutes with the other ops, so it is applied first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..models.config_fields import IMAGENET_MEAN, IMAGENET_STD
from ..models.multipatch import color_jitter, gaussian_blur, grayscale

# Column of each parameter in a view's parameter vector.
PARAMS = ("flip", "jitter", "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2", "order3",
          "gray", "blur", "sigma", "solarize")
_P = {name: i for i, name in enumerate(PARAMS)}


@dataclass(frozen=True, kw_only=True)
class ViewOps:
    """The device part of one view: probabilities and ranges (0 = the op is not in the recipe).

    ``gray_first`` puts grayscale before the jitter (MoCo v1's ``RandomGrayscale`` precedes ``ColorJitter``).
    """

    flip_p: float = 0.5
    jitter_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    gray_p: float = 0.0
    gray_first: bool = False
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def draw(self) -> torch.Tensor:
        """This view's random parameters ``[len(PARAMS)]`` from torch's (per-sample seeded) CPU generator.

        Computed on Python floats (one ``tolist`` per draw): per-element tensor writes cost 0.1 ms a view."""
        u = torch.rand(len(PARAMS)).tolist()
        bri, con, sat, hue = self.jitter
        lo, hi = self.blur_sigma
        order = torch.randperm(4).tolist()
        return torch.tensor([
            float(u[0] < self.flip_p), float(u[1] < self.jitter_p),
            1 - bri + 2 * bri * u[2], 1 - con + 2 * con * u[3], 1 - sat + 2 * sat * u[4], -hue + 2 * hue * u[5],
            *order, float(u[6] < self.gray_p), float(u[7] < self.blur_p), lo + (hi - lo) * u[8],
            float(u[9] < self.solarize_p),
        ])


def apply_ops(x: torch.Tensor, params: torch.Tensor, ops: ViewOps) -> torch.Tensor:
    """One view's device ops on a batch, in place: ``x [N, 3, H, W]`` float in [0, 1] (modified and returned),
    ``params [N, len(PARAMS)]``. Each op touches only the rows it applies to (none when it is not in the recipe)."""

    def rows(name: str, p: float = 1.0) -> torch.Tensor:
        if p <= 0:
            return params.new_zeros(0, dtype=torch.long)
        return params[:, _P[name]].bool().nonzero(as_tuple=True)[0]

    def gray() -> None:
        idx = rows("gray", ops.gray_p)
        if idx.numel():
            x[idx] = grayscale(x[idx]).expand(-1, 3, -1, -1)

    idx = rows("flip")
    if idx.numel():
        x[idx] = x[idx].flip(-1)
    if ops.gray_first:
        gray()
    idx = rows("jitter", ops.jitter_p)
    if idx.numel():
        factors = params[idx, _P["brightness"]:_P["hue"] + 1]
        x[idx] = color_jitter(x[idx], factors, params[idx, _P["order0"]:_P["order3"] + 1].long())
    if not ops.gray_first:
        gray()
    idx = rows("blur", ops.blur_p)
    if idx.numel():
        x[idx] = gaussian_blur(x[idx], params[idx, _P["sigma"]])
    idx = rows("solarize", ops.solarize_p)
    if idx.numel():
        part = x[idx]
        x[idx] = torch.where(part >= 128 / 255, 1.0 - part, part)  # PIL's ImageOps.solarize(threshold=128)
    return x


class DeviceViews:
    """``PIL -> (uint8 crops [V, S, S, C], params [V, len(PARAMS)])`` in the workers; :meth:`finish` on the
    device turns a batch into normalised float views ``[B, V, C, S, S]``."""

    def __init__(self, crops: Sequence[v2.Transform], ops: Sequence[ViewOps], *, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        if len(crops) != len(ops):
            raise ValueError(f"one crop per view: {len(crops)} crops, {len(ops)} op sets")
        self.crops, self.ops = list(crops), list(ops)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        views, params = [], []
        for crop, ops in zip(self.crops, self.ops):
            views.append(np.asarray(crop(image)))  # H x W x C, as PIL holds it
            params.append(ops.draw())
        return torch.from_numpy(np.stack(views)), torch.stack(params)

    @torch.no_grad()
    def finish(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, V, S, S, C]`` + ``params [B, V, P]`` (on the device) -> normalised float32 views
        ``[B, V, C, S, S]``."""
        x = x.permute(0, 1, 4, 2, 3).contiguous()
        with torch.autocast(x.device.type, enabled=False):  # pixel arithmetic stays fp32 under bf16 training
            out = x.float().div_(255.0)
            for v, ops in enumerate(self.ops):
                out[:, v] = apply_ops(out[:, v].contiguous(), params[:, v], ops)
            mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
            return out.sub_(mean).div_(std)


def device_view_transform(
    recipe: str,
    *,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float | None = None,
) -> DeviceViews:
    """The ``--augment_on device`` split of a recipe in :data:`hf_mixssl.data.views.VIEW_RECIPES`."""
    from .views import VIEW_RECIPES

    def rrc(default_min: float, **kw) -> v2.Transform:
        return v2.RandomResizedCrop(size, scale=(min_scale or default_min, 1.0), antialias=True, **kw)

    if recipe == "moco_v1":  # RandomGrayscale(0.2) then ColorJitter(0.4, 0.4, 0.4, 0.4) always (main_moco.py)
        ops = ViewOps(jitter_p=1.0, jitter=(0.4, 0.4, 0.4, 0.4), gray_p=0.2, gray_first=True)
        return DeviceViews([rrc(0.2)] * 2, [ops] * 2, mean=mean, std=std)
    if recipe == "moco_v2":  # --aug-plus: jitter 0.8, gray 0.2, blur 0.5
        ops = ViewOps(jitter_p=0.8, gray_p=0.2, blur_p=0.5)
        return DeviceViews([rrc(0.2)] * 2, [ops] * 2, mean=mean, std=std)
    if recipe == "moco_cifar":  # the Colab: no blur
        ops = ViewOps(jitter_p=0.8, gray_p=0.2)
        return DeviceViews([rrc(0.08)] * 2, [ops] * 2, mean=mean, std=std)
    if recipe == "moco_v3":  # BYOL's asymmetric pair: blur 1.0 / 0.1, solarize 0 / 0.2
        common = dict(jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2)
        ops = [ViewOps(**common, blur_p=1.0), ViewOps(**common, blur_p=0.1, solarize_p=0.2)]
        return DeviceViews([rrc(0.08)] * 2, ops, mean=mean, std=std)
    if recipe == "classify":
        crop = v2.RandomCrop(size, padding=size // 8) if size <= 64 else rrc(0.08)
        return DeviceViews([crop], [ViewOps()], mean=mean, std=std)
    if recipe == "mae":
        return DeviceViews([rrc(0.2, interpolation=v2.InterpolationMode.BICUBIC)], [ViewOps()], mean=mean, std=std)
    if recipe == "emp_ssl":  # the whole image; the model cuts its patches on the device itself
        return DeviceViews([v2.Resize((size, size), antialias=True)], [ViewOps(flip_p=0.0)], mean=mean, std=std)
    raise ValueError(f"unknown view recipe {recipe!r}; choose one of {VIEW_RECIPES}")
