"""GridMix, SmoothMix, SaliencyMix and ResizeMix against hand copies of OpenMixup's
``openmixup/models/augments/{gridmix,smoothmix,saliencymix,resizemix}.py`` (Westlake-AI/openmixup @ 37e1372)
for fixed random draws. The copies keep the official lines; only ``.cuda()`` and the NumPy draws (passed in) differ.
"""

import math

import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

from hf_mixssl.models.mixing import (
    grid_mask, gridmix, resizemix, saliency_box, saliencymix, smoothmix, smoothmix_kernel,
)


# ----------------------------------------------------------------------------------------- hand copies
def official_rand_grid(lam, size, cut_area_ratio, cut_aspect_ratio, n_holes, hole_aspect_ratio, cx, cy):
    W = size[2]
    H = size[3]
    cut_area = int(H * W * cut_area_ratio)
    cut_w = int(np.sqrt(cut_area / cut_aspect_ratio))
    cut_h = int(cut_w * cut_aspect_ratio)
    xc1 = int((W - cut_w) * cx)
    yc1 = int((H - cut_h) * cy)
    xc2 = xc1 + cut_w
    yc2 = yc1 + cut_h
    width, height = xc2 - xc1, yc2 - yc1
    assert 1 <= n_holes <= width // 2
    patch_width = math.ceil(width / n_holes)
    patch_height = int(patch_width * hole_aspect_ratio)
    ny = math.ceil(height / patch_height)
    ratio = np.sqrt(1 - lam)
    hole_width = int(patch_width * ratio)
    hole_height = int(patch_height * ratio)
    hole_width = min(max(hole_width, 1), patch_width - 1)
    hole_height = min(max(hole_height, 1), patch_height - 1)
    holes = []
    for i in range(n_holes + 1):
        for j in range(ny + 1):
            x1 = min(patch_width * i, width)
            y1 = min(patch_height * j, height)
            x2 = min(x1 + hole_width, width)
            y2 = min(y1 + hole_height, height)
            holes.append((x1, y1, x2, y2))
    mask = torch.zeros((1, 1, W, H))
    for x1, y1, x2, y2 in holes:
        mask[0, 0, yc1 + y1: yc1 + y2, xc1 + x1: xc1 + x2] = 1.
    return mask


def official_gaussian_kernel(kernel_size, rand_w, rand_h, sigma):
    s = kernel_size * 2
    x_cord = torch.arange(s)
    x_grid = x_cord.repeat(s).view(s, s)
    y_grid = x_grid.t()
    xy_grid = torch.stack([x_grid, y_grid], dim=-1)
    xy_grid = torch.roll(xy_grid, rand_w, 0)
    xy_grid = torch.roll(xy_grid, rand_h, 1)
    crop_size = s // 4
    xy_grid = xy_grid[crop_size: s - crop_size, crop_size: s - crop_size]
    mean = (s - 1) / 2
    var = sigma ** 2
    g_filter = torch.exp(-torch.sum((xy_grid - mean) ** 2, dim=-1) / (2 * var))
    g_filter = g_filter.view(kernel_size, kernel_size)
    return g_filter


def official_saliency_bbox(img, lam):
    from cv2.saliency import StaticSaliencyFineGrained_create

    size = img.size()
    W = size[1]
    H = size[2]
    cut_rat = np.sqrt(1. - lam)
    cut_w = int(W * cut_rat)
    cut_h = int(H * cut_rat)
    img = img.type(torch.float32)
    temp_img = img.cpu().numpy().transpose(1, 2, 0)
    saliency = StaticSaliencyFineGrained_create()
    (success, saliencyMap) = saliency.computeSaliency(temp_img)
    saliencyMap = (saliencyMap * 255).astype("uint8")
    maximum_indices = np.unravel_index(np.argmax(saliencyMap, axis=None), saliencyMap.shape)
    x = maximum_indices[0]
    y = maximum_indices[1]
    bbx1 = np.clip(x - cut_w // 2, 0, W)
    bby1 = np.clip(y - cut_h // 2, 0, H)
    bbx2 = np.clip(x + cut_w // 2, 0, W)
    bby2 = np.clip(y + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def official_resizemix(img, rand_index, tao, cx, cy, interpolate_mode="nearest"):
    """The non-dist branch of ``resizemix`` after ``tao`` is drawn, with the box centre passed in."""
    img = img.clone()
    img_resize = img.clone()[rand_index]
    _, _, h, w = img.size()
    size = img.size()
    W = size[2]
    H = size[3]
    cut_w = int(W * tao)
    cut_h = int(H * tao)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    img_resize = interpolate(img_resize, (bby2 - bby1, bbx2 - bbx1), mode=interpolate_mode)
    img[:, :, bby1:bby2, bbx1:bbx2] = img_resize
    lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (w * h))
    return img, lam


# ----------------------------------------------------------------------------------------- tests
GRID_CASES = [  # (size, lam, n_holes, hole_aspect, cut_area, cut_aspect, cx, cy)
    (32, 0.3, 2, 1.0, 0.5, 0.5, 0.1, 0.9),
    (32, 0.7, 6, 1.0, 1.0, 1.0, 0.0, 0.0),
    (32, 0.5, 4, 1.3, 0.8, 1.7, 0.6, 0.2),
    (32, 0.9, 3, 0.8, 1.0, 2.0, 0.5, 0.5),  # cut region taller than the image: negative offsets
    (64, 0.05, 5, 1.0, 0.6, 0.7, 0.99, 0.33),
]


@pytest.mark.parametrize("case", GRID_CASES)
def test_grid_mask_equals_official(case):
    size, lam, holes, hole_aspect, area, aspect, cx, cy = case
    ours = grid_mask(size, size, lam, n_holes=holes, hole_aspect_ratio=hole_aspect, cut_area_ratio=area,
                     cut_aspect_ratio=aspect, cy=cy, cx=cx)
    official = official_rand_grid(lam, (2, 3, size, size), area, aspect, holes, hole_aspect, cx, cy)[0, 0]
    assert torch.equal(ours, official)


def test_gridmix_mixes_through_the_holes_and_lam_counts_them():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([3, 2, 1, 0])
    out = gridmix(x, lam=0.4, perm=perm, generator=torch.Generator().manual_seed(5))
    from_partner = (out.x == x[perm]).all(dim=1) & (out.x != x).any(dim=1)
    # one mask for the whole batch, lam = 1 - holes / pixels as the official
    assert torch.equal(from_partner[0], from_partner[1])
    assert out.lam == pytest.approx(1.0 - from_partner[0].float().mean().item())
    with pytest.raises(ValueError, match="n_holes"):
        gridmix(x, lam=0.4, perm=perm, n_holes=(40, 40))


@pytest.mark.parametrize("size,shift_h,shift_w,sigma", [(32, 0, 0, 8.0), (32, -16, 15, 12.3), (32, 7, -3, 16.0),
                                                        (64, -20, 31, 20.5)])
def test_smoothmix_kernel_equals_official(size, shift_h, shift_w, sigma):
    ours = smoothmix_kernel(size, size, shift_h=shift_h, shift_w=shift_w, sigma=sigma)
    # the official call passes (h, rand_h, rand_w, sigma) into gaussian_kernel(kernel_size, rand_w, rand_h, sigma)
    official = official_gaussian_kernel(size, shift_h, shift_w, torch.tensor([sigma]))
    torch.testing.assert_close(ours, official, rtol=1e-6, atol=1e-7)


def test_smoothmix_draws_and_label_weight_as_official():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([1, 2, 3, 0])
    out = smoothmix(x, lam=0.9, perm=perm, generator=torch.Generator().manual_seed(3))
    # the official draws with the same generator: rand_w, rand_h, sigma (lam plays no part)
    g = torch.Generator().manual_seed(3)
    rand_w = int(torch.randint(0, 32, (1,), generator=g) - 32 / 2)
    rand_h = int(torch.randint(0, 32, (1,), generator=g) - 32 / 2)
    sigma = (torch.rand(1, generator=g) / 4 + 0.25) * 32
    kernel = official_gaussian_kernel(32, rand_h, rand_w, sigma)
    torch.testing.assert_close(out.x, x * (1 - kernel) + x[perm] * kernel, rtol=1e-5, atol=1e-6)
    assert out.lam == pytest.approx(float(torch.sum(kernel) / (32 * 32)), rel=1e-5)  # the partner's share
    own = smoothmix(x, perm=perm, label_weight="own_share", generator=torch.Generator().manual_seed(3))
    assert own.lam == pytest.approx(1.0 - out.lam, rel=1e-5)
    with pytest.raises(ValueError, match="label_weight"):
        smoothmix(x, perm=perm, label_weight="swapped")


@pytest.mark.parametrize("seed,lam", [(0, 0.3), (1, 0.7), (2, 0.95)])
def test_saliency_box_and_mix_equal_official(seed, lam):
    pytest.importorskip("cv2.saliency")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=g)
    x[:, :, 10:14, 20:26] += 4.0  # something salient
    perm = torch.tensor([2, 0, 3, 1])
    y1, y2, x1, x2 = saliency_box(x[perm[0]], lam)
    bbx1, bby1, bbx2, bby2 = official_saliency_bbox(x[perm[0]], lam)
    assert (y1, y2, x1, x2) == (bbx1, bbx2, bby1, bby2)
    out = saliencymix(x, torch.arange(4), lam=lam, perm=perm)
    expected = x.clone()
    expected[:, :, bbx1:bbx2, bby1:bby2] = x[perm][:, :, bbx1:bbx2, bby1:bby2]
    assert torch.equal(out.x, expected)
    assert out.lam == pytest.approx(1 - ((bbx2 - bbx1) * (bby2 - bby1) / (32 * 32)))


@pytest.mark.parametrize("tau,cx,cy", [(0.5, 16, 16), (0.8, 2, 30), (0.13, 31, 0), (0.37, 7, 19)])
def test_resizemix_equals_official(tau, cx, cy, monkeypatch):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([3, 0, 1, 2])
    centre = iter([cy, cx])  # our box-centre draws, in order: the row, then the column
    monkeypatch.setattr(torch, "randint", lambda low, high, size, generator=None: torch.tensor([next(centre)]))
    ours = resizemix(x, torch.arange(4), perm=perm, tau=tau)
    monkeypatch.undo()
    expected, lam = official_resizemix(x, perm, tau, cx, cy)
    assert torch.equal(ours.x, expected) and ours.lam == pytest.approx(lam)


def test_resizemix_tau_draws():
    x = torch.randn(2, 3, 32, 32)
    perm = torch.tensor([1, 0])
    # a given lam is the scale, clipped to the scope (OpenMixup's non-dist branch)
    small = resizemix(x, perm=perm, lam=0.01, generator=torch.Generator().manual_seed(0))
    assert small.lam >= 1 - (int(32 * 0.1) // 2 * 2) ** 2 / 1024 - 1e-9
    # use_alpha: Beta(alpha) draws, redrawn uniformly when outside the scope; every tau is in the scope
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = resizemix(x, perm=perm, use_alpha=True, alpha=0.2, generator=g)
        assert out.lam >= 1 - (int(32 * 0.8) // 2 * 2) ** 2 / 1024 - 1e-9


def test_saliencymix_without_opencv_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2.saliency", None)  # as if opencv-contrib were not installed
    with pytest.raises(ImportError, match=r'pip install "hf_mixssl\[saliency\]"'):
        saliency_box(torch.zeros(3, 8, 8), 0.5)
