"""View recipes split between the data workers and the training device (``--augment_on device``).

The workers only decode and take each view's crop at the target size (``RandomResizedCrop`` or the CIFAR
pad-and-crop, as :mod:`hf_mixssl.data.views`), as ``uint8`` in the decoded ``H x W x C`` layout (the transpose
to ``C x H x W`` costs a worker 0.12 ms an image and the device next to nothing), and draw every other random
parameter of the view from the per-sample seeded generator: ``[flip, jitter?, brightness, contrast, saturation,
hue, order x4, gray?, blur?, sigma, solarize?]`` (:data:`PARAMS`). The device then applies flip, colour jitter
(the four ops in each sample's own order, as torchvision's ``ColorJitter``), grayscale, Gaussian blur, solarize
and normalisation to the whole batch at once (:func:`apply_ops`, built from :mod:`hf_mixssl.models.pixel_ops`,
as EMP-SSL's patch generator is; on a CPU in cache-sized chunks of rows, :func:`~hf_mixssl.models.pixel_ops.chunks`).
Views are reproducible per sample and depend neither on the worker count nor on the batch they are in, as on the
CPU path.

Same distributions as the CPU recipes (and the official transforms); numerical differences: the colour ops run
in float32 on the device without re-quantising to 8 bits between ops (PIL works in uint8), the Gaussian blur is
an exact separable Gaussian of radius ``ceil(3 sigma_max)`` of the recipe's range with reflect padding (PIL's
``GaussianBlur(radius=sigma)`` approximates it with three box blurs), hue uses torchvision's tensor formula (PIL
converts through HSV in uint8), and luma (grayscale, contrast, saturation) weighs R by PIL's 0.299
(torchvision's tensor ops: 0.2989). Flip commutes with the other ops, so it is applied first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..models import pixel_ops
from ..models.config_fields import IMAGENET_MEAN, IMAGENET_STD
from ..models.pixel_ops import EAGER, Kernels, blur_radius

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


def apply_ops(x: torch.Tensor, params: torch.Tensor, ops: ViewOps, *, mean: Sequence[float], std: Sequence[float],
              out: torch.Tensor, k: Kernels = EAGER) -> None:
    """One view's device ops after the flip, then ``(x - mean) / std`` into ``out``: ``x [N, 3, H, W]`` float in
    [0, 1] (rows may be written in place), ``params [N, len(PARAMS)]``; ``k`` the eager or compiled kernels. Ops not
    in the recipe are skipped (:meth:`~hf_mixssl.models.pixel_ops.Kernels.jitter_blur_finish`)."""
    on = {name: params[:, _P[name]] > 0 for name in ("jitter", "gray", "blur", "solarize")}
    none = torch.zeros_like(on["gray"])
    if ops.gray_p > 0 and ops.gray_first:
        x = k.set_gray(x, on["gray"])
    jitter = (params[:, _P["brightness"]:_P["hue"] + 1], params[:, _P["order0"]:_P["order3"] + 1], on["jitter"])
    blur = (on["blur"], params[:, _P["sigma"]], blur_radius(ops.blur_sigma[1], min(x.shape[-2:])))
    k.jitter_blur_finish(x, out, jitter=jitter if ops.jitter_p > 0 else None, blur=blur if ops.blur_p > 0 else None,
                         gray=on["gray"] if ops.gray_p > 0 and not ops.gray_first else none,
                         solarize=on["solarize"] if ops.solarize_p > 0 else none, mean=mean, std=std)


class DeviceViews:
    """``PIL -> (uint8 crops [V, S, S, C], params [V, len(PARAMS)])`` in the workers; :meth:`finish` on the
    device turns a batch into normalised float views ``[B, V, C, S, S]``.

    ``compile``: run the device ops through ``torch.compile`` (:func:`hf_mixssl.models.pixel_ops.compiled`;
    ``--torch_compile`` sets it). Eager and compiled views agree to float rounding."""

    def __init__(self, crops: Sequence[v2.Transform], ops: Sequence[ViewOps], *, mean: Sequence[float],
                 std: Sequence[float], compile: bool = False) -> None:
        if len(crops) != len(ops):
            raise ValueError(f"one crop per view: {len(crops)} crops, {len(ops)} op sets")
        self.crops, self.ops = list(crops), list(ops)
        self.mean, self.std, self.compile = tuple(mean), tuple(std), compile

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
        k = pixel_ops.compiled() if self.compile else EAGER
        b, v, h, w, c = x.shape
        out = torch.empty(b, v, c, h, w, device=x.device)
        with torch.autocast(x.device.type, enabled=False):  # pixel arithmetic stays fp32 under bf16 training
            for view, ops in enumerate(self.ops):
                for rows in pixel_ops.chunks(b, out[0, view]):  # on a CPU: rows that stay in cache
                    p = params[rows, view]
                    planes = k.to_planes(x[rows, view], p[:, _P["flip"]] > 0)
                    apply_ops(planes, p, ops, mean=self.mean, std=self.std, out=out[rows, view], k=k)
        return out


def device_view_transform(
    recipe: str,
    *,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    min_scale: float | None = None,
    compile: bool = False,
) -> DeviceViews:
    """The ``--augment_on device`` split of a recipe in :data:`hf_mixssl.data.views.VIEW_RECIPES` (``compile``: the
    device ops through ``torch.compile``, see :class:`DeviceViews`)."""
    crops, ops = _recipe_split(recipe, size=size, min_scale=min_scale)
    return DeviceViews(crops, ops, mean=mean, std=std, compile=compile)


def _recipe_split(recipe: str, *, size: int, min_scale: float | None) -> tuple[list[v2.Transform], list[ViewOps]]:
    """Each view's worker crop and device ops for ``recipe``."""
    from .views import VIEW_RECIPES

    def rrc(default_min: float, **kw) -> v2.Transform:
        return v2.RandomResizedCrop(size, scale=(min_scale or default_min, 1.0), antialias=True, **kw)

    if recipe == "moco_v1":  # RandomGrayscale(0.2) then ColorJitter(0.4, 0.4, 0.4, 0.4) always (main_moco.py)
        ops = ViewOps(jitter_p=1.0, jitter=(0.4, 0.4, 0.4, 0.4), gray_p=0.2, gray_first=True)
        return [rrc(0.2)] * 2, [ops] * 2
    if recipe == "moco_v2":  # --aug-plus: jitter 0.8, gray 0.2, blur 0.5
        ops = ViewOps(jitter_p=0.8, gray_p=0.2, blur_p=0.5)
        return [rrc(0.2)] * 2, [ops] * 2
    if recipe == "moco_cifar":  # the Colab: no blur
        ops = ViewOps(jitter_p=0.8, gray_p=0.2)
        return [rrc(0.08)] * 2, [ops] * 2
    if recipe == "moco_v3":  # BYOL's asymmetric pair: blur 1.0 / 0.1, solarize 0 / 0.2
        common = dict(jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2)
        ops = [ViewOps(**common, blur_p=1.0), ViewOps(**common, blur_p=0.1, solarize_p=0.2)]
        return [rrc(0.08)] * 2, ops
    if recipe == "classify":
        crop = v2.RandomCrop(size, padding=size // 8) if size <= 64 else rrc(0.08)
        return [crop], [ViewOps()]
    if recipe == "mae":
        return [rrc(0.2, interpolation=v2.InterpolationMode.BICUBIC)], [ViewOps()]
    if recipe == "emp_ssl":  # the whole image; the model cuts its patches on the device itself
        return [v2.Resize((size, size), antialias=True)], [ViewOps(flip_p=0.0)]
    raise ValueError(f"unknown view recipe {recipe!r}; choose one of {VIEW_RECIPES}")
