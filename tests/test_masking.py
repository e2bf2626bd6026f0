"""MAE's pure pieces: patchify, random masking, sin-cos position embeddings, the masked loss."""

import math

import pytest
import torch

from hf_mixssl.models.masking import (masked_mse_loss, num_visible, patch_targets, patchify, random_masking,
                               sincos_pos_embed_2d, unpatchify)


def test_patchify_layout_and_inverse():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) = pixels [4:8, 8:12], flattened as (p_row, p_col, channel)
    assert torch.equal(p[0, 1 * 3 + 2], x[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(p, 4, grid=(2, 3)), x)
    with pytest.raises(ValueError, match="patch_size"):
        patchify(torch.randn(1, 3, 10, 10), 4)


def official_random_masking(x, mask_ratio, noise):
    """Hand copy of facebookresearch/mae models_mae.py MaskedAutoencoderViT.random_masking (noise injected)."""
    N, L, D = x.shape  # batch, length, dim
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


@pytest.mark.parametrize("n,ratio", [(64, 0.75), (196, 0.75), (49, 0.6), (10, 0.0), (50, 0.7)])
def test_masking_equals_the_official_code(n, ratio):
    tokens, noise = torch.randn(3, n, 5), torch.rand(3, n)
    ours = random_masking(tokens, ratio, noise=noise)
    for a, b in zip(ours, official_random_masking(tokens, ratio, noise)):
        assert torch.equal(a, b)
    assert ours[0].shape[1] == int(n * (1 - ratio))  # truncated: 49 x 0.4 = 19.6 keeps 19


@pytest.mark.parametrize("n,ratio", [(64, 0.75), (196, 0.75), (49, 0.6), (10, 0.0)])
def test_masking_keeps_int_n_visible_and_restores_order(n, ratio):
    b, d = 5, 7
    tokens = torch.arange(b * n * d, dtype=torch.float32).reshape(b, n, d)
    visible, mask, ids_restore = random_masking(tokens, ratio, generator=torch.Generator().manual_seed(0))
    keep = int(n * (1 - ratio))
    assert num_visible(n, ratio) == keep
    assert visible.shape == (b, keep, d)
    assert torch.equal(mask.sum(dim=1), torch.full((b,), float(n - keep)))
    # the visible tokens are exactly the unmasked ones, and ids_restore inverts the shuffle
    for i in range(b):
        kept = tokens[i][mask[i] == 0]
        assert torch.equal(torch.sort(visible[i][:, 0]).values, kept[:, 0])
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(tokens, 1, ids_shuffle[..., None].expand(-1, -1, d))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, d)), tokens)
    assert torch.equal(shuffled[:, :keep], visible)


def test_masking_is_per_sample_and_fixed_by_noise():
    tokens = torch.randn(4, 16, 3)
    noise = torch.rand(4, 16)
    a = random_masking(tokens, 0.75, noise=noise)
    b = random_masking(tokens, 0.75, noise=noise.clone())
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(a[1][0], a[1][i]) for i in range(1, 4))  # samples get different masks
    # the kept patches are the ones with the smallest noise
    assert torch.equal(a[1][0] == 0, noise[0] <= noise[0].sort().values[3])
    with pytest.raises(ValueError, match="noise"):
        random_masking(tokens, 0.75, noise=torch.rand(4, 15))
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(tokens, 1.0)


def test_sincos_matches_closed_form():
    dim, gh, gw = 16, 3, 5
    emb = sincos_pos_embed_2d(dim, (gh, gw), cls_token=True)
    assert emb.shape == (1 + gh * gw, dim) and torch.equal(emb[0], torch.zeros(dim))
    q = dim // 4
    for r in range(gh):
        for c in range(gw):
            row = emb[1 + r * gw + c]
            for k in range(q):
                w = 1.0 / 10000 ** (k / q)
                # first half: the column coordinate (MAE's meshgrid puts w first), second half: the row
                assert row[k].item() == pytest.approx(math.sin(c * w), abs=1e-6)
                assert row[q + k].item() == pytest.approx(math.cos(c * w), abs=1e-6)
                assert row[2 * q + k].item() == pytest.approx(math.sin(r * w), abs=1e-6)
                assert row[3 * q + k].item() == pytest.approx(math.cos(r * w), abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(18, (2, 2))


def test_loss_counts_masked_patches_only_and_matches_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 8, 8, generator=g)
    pred = torch.randn(3, 4, 48, generator=g)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    for norm_pix in (False, True):
        target = patch_targets(images, 4, norm_pix=norm_pix)
        # hand-written reference (models_mae.forward_loss)
        ref_t = patchify(images, 4)
        if norm_pix:
            ref_t = (ref_t - ref_t.mean(-1, keepdim=True)) / (ref_t.var(-1, keepdim=True) + 1e-6) ** 0.5
        total, count = 0.0, 0
        for i in range(3):
            for j in range(4):
                if mask[i, j]:
                    total += ((pred[i, j] - ref_t[i, j]) ** 2).mean().item()
                    count += 1
        assert masked_mse_loss(pred, target, mask).item() == pytest.approx(total / count, rel=1e-5)
    # visible patches do not count: changing their prediction leaves the loss unchanged
    target = patch_targets(images, 4, norm_pix=True)
    moved = pred.clone()
    moved[mask == 0] += 100.0
    assert masked_mse_loss(moved, target, mask) == pytest.approx(masked_mse_loss(pred, target, mask).item())
