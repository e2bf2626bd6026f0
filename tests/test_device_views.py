"""Device augmentation: each batched op equals torchvision's tensor op for fixed parameters, the parameters follow
the recipe's probabilities and ranges, and the views do not depend on the worker count."""

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from hf_mixssl.data.device_views import PARAMS, DeviceViews, ViewOps, device_view_transform
from hf_mixssl.data.views import VIEW_RECIPES

P = {n: i for i, n in enumerate(PARAMS)}


def reference(x: torch.Tensor, p: torch.Tensor, ops: ViewOps) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample ``[3, H, W]`` through torchvision's tensor functional ops, in the recipe's order; returns the
    result and the image that entered the solarize threshold."""
    if p[P["flip"]]:
        x = TF.horizontal_flip(x)

    def gray(x):
        return TF.rgb_to_grayscale(x, num_output_channels=3) if p[P["gray"]] else x

    if ops.gray_first:
        x = gray(x)
    if ops.jitter_p > 0 and p[P["jitter"]]:
        fns = [lambda t: TF.adjust_brightness(t, float(p[P["brightness"]])),
               lambda t: TF.adjust_contrast(t, float(p[P["contrast"]])),
               lambda t: TF.adjust_saturation(t, float(p[P["saturation"]])),
               lambda t: TF.adjust_hue(t, float(p[P["hue"]]))]
        for i in p[P["order0"]:P["order3"] + 1].long().tolist():
            x = fns[i](x)
    if not ops.gray_first:
        x = gray(x)
    if ops.blur_p > 0 and p[P["blur"]]:
        sigma = float(p[P["sigma"]])
        x = TF.gaussian_blur(x, kernel_size=[2 * math.ceil(3 * sigma) + 1] * 2, sigma=[sigma, sigma])
    before = x
    if ops.solarize_p > 0 and p[P["solarize"]]:
        x = TF.solarize(x, threshold=128 / 255)
    return x, before


OPS = {
    "moco_v2": ViewOps(jitter_p=0.8, gray_p=0.2, blur_p=0.5),
    "moco_v1": ViewOps(jitter_p=1.0, jitter=(0.4, 0.4, 0.4, 0.4), gray_p=0.2, gray_first=True),
    "moco_v3_view2": ViewOps(jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2, blur_p=0.1, solarize_p=0.2),
}


def crops_and_params(ops: ViewOps, n: int = 8, size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 crops ``[n, 1, S, S, 3]`` as the workers ship them, and parameters with every op on some rows."""
    torch.manual_seed(0)
    crops = torch.randint(0, 256, (n, 1, size, size, 3), dtype=torch.uint8)
    params = torch.stack([ops.draw() for _ in range(n)])
    params[:4, [P["jitter"], P["gray"], P["blur"], P["solarize"], P["flip"]]] = 1.0  # every op on some rows
    params[0, P["gray"]] = 0.0
    params[0, P["sigma"]] = 1.7  # a wide kernel next to narrow ones in one batch
    return crops, params[:, None]


def unnormalised(ops: ViewOps, *, compile: bool = False) -> DeviceViews:
    return DeviceViews([None], [ops], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), compile=compile)


@pytest.mark.parametrize("name", OPS)
def test_batched_ops_equal_torchvision_per_sample(name):
    ops = OPS[name]
    crops, params = crops_and_params(ops)
    out = unnormalised(ops).finish(crops, params)[:, 0]
    for i in range(len(crops)):
        x = crops[i, 0].permute(2, 0, 1).float() / 255
        expected, before = reference(x, params[i, 0], ops)
        # Luma: PIL's (and so the official pipelines') 0.299 R weight here, torchvision's 0.2989: up to 1e-4 apart,
        # which may flip a pixel lying within that distance of the solarize threshold.
        solarized = ops.solarize_p > 0 and bool(params[i, 0, P["solarize"]])
        far = (before - 128 / 255).abs() > 1e-3 if solarized else torch.ones_like(before, dtype=torch.bool)
        assert torch.allclose(out[i][far], expected[far], atol=3e-4), i
        assert far.float().mean() > 0.9


def test_a_view_does_not_depend_on_its_batch(monkeypatch):
    """Rows are processed in chunks on a CPU and the blur radius is the recipe's: a row's view is the same alone,
    in any chunk, and in the whole batch."""
    from hf_mixssl.models import pixel_ops

    ops = OPS["moco_v3_view2"]
    crops, params = crops_and_params(ops, n=7)
    views = unnormalised(ops)
    whole = views.finish(crops, params)
    monkeypatch.setattr(pixel_ops, "CPU_CHUNK_BYTES", 2 * 3 * 20 * 20 * 4)  # two rows a chunk
    assert torch.allclose(views.finish(crops, params), whole, atol=1e-6)
    for i in (0, 3, 6):
        assert torch.allclose(views.finish(crops[i:i + 1], params[i:i + 1]), whole[i:i + 1], atol=1e-6)


def test_compiled_kernels_equal_eager():
    """``--torch_compile`` runs the same ops through ``torch.compile`` (inductor): equal to float rounding."""
    for name in ("moco_v1", "moco_v3_view2"):  # grayscale first / jitter, blur, grayscale and solarize
        crops, params = crops_and_params(OPS[name])
        eager = unnormalised(OPS[name]).finish(crops, params)
        compiled = unnormalised(OPS[name], compile=True).finish(crops, params)
        assert torch.allclose(compiled, eager, atol=1e-5), name


def test_parameters_follow_the_recipe():
    ops = ViewOps(jitter_p=0.8, gray_p=0.2, blur_p=0.5, solarize_p=0.1)
    torch.manual_seed(1)
    p = torch.stack([ops.draw() for _ in range(4000)])
    for name, prob in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("solarize", 0.1)):
        assert abs(p[:, P[name]].mean() - prob) < 0.03, name
    assert p[:, P["brightness"]].min() >= 0.6 and p[:, P["brightness"]].max() <= 1.4
    assert p[:, P["hue"]].abs().max() <= 0.1 and 0.1 <= p[:, P["sigma"]].min() and p[:, P["sigma"]].max() <= 2.0
    orders = p[:, P["order0"]:P["order3"] + 1]
    assert (orders.sort(dim=1).values == torch.arange(4.0)).all()  # a permutation per view
    assert len({tuple(o.tolist()) for o in orders}) == 24


@pytest.mark.parametrize("recipe", VIEW_RECIPES)
def test_every_recipe_has_a_device_split(recipe):
    from PIL import Image

    views = device_view_transform(recipe, size=32)
    torch.manual_seed(0)
    crops, params = views(Image.effect_noise((40, 36), 50).convert("RGB"))
    # workers ship H x W x C uint8 (no transpose); the device returns [B, V, C, H, W] floats
    assert crops.dtype == torch.uint8 and crops.shape[1:] == (32, 32, 3) and params.shape == (crops.shape[0], len(PARAMS))
    out = views.finish(crops[None], params[None])
    assert out.dtype == torch.float32 and out.shape == (1, crops.shape[0], 3, 32, 32) and torch.isfinite(out).all()
    assert out.is_contiguous()


def test_device_views_do_not_depend_on_workers(cifar10):
    import itertools

    from hf_mixssl.data.stream import ImageStream

    def first_batches(workers):
        stream = ImageStream(cifar10, "train", device_view_transform("moco_v2", size=32), 8, seed=5, buffer_size=64,
                             num_workers=workers)
        it = stream.on_device("cpu")
        try:
            return list(itertools.islice(it, 3))
        finally:
            it.close()

    a, b = first_batches(0), first_batches(2)
    for x, y in zip(a, b):
        assert x["pixel_values"].shape == (8, 2, 3, 32, 32) and x["pixel_values"].dtype == torch.float32
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["labels"], y["labels"])
    assert not torch.equal(a[0]["pixel_values"][:, 0], a[0]["pixel_values"][:, 1])  # two different views
