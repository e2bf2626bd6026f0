import pytest
import torch

from hf_mixssl.models.mixing import cutmix, mixup, rand_bbox, reverse_perm, sample_lam, unmix_images


def batch(b=6):
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 8, 8).clone()
    return x, torch.arange(b) * 10


class TestMixup:
    def test_partner_and_labels(self):
        x, y = batch()
        perm = reverse_perm(6)
        out = mixup(x, y, lam=0.25, perm=perm)
        assert torch.allclose(out.x[0], 0.25 * x[0] + 0.75 * x[5])
        assert out.y_a.tolist() == y.tolist() and out.y_b.tolist() == y.flip(0).tolist() and out.lam == 0.25

    def test_bad_lam_and_perm(self):
        x, _ = batch()
        with pytest.raises(ValueError, match="lam"):
            mixup(x, lam=1.5, perm=reverse_perm(6))
        with pytest.raises(ValueError, match="perm"):
            mixup(x, lam=0.5, perm=reverse_perm(5))


class TestCutMix:
    def test_box_pixels_come_from_partner_and_lam_matches_area(self):
        x, y = batch()
        out = cutmix(x, y, lam=0.5, perm=reverse_perm(6), box=(2, 6, 0, 4))
        assert torch.equal(out.x[0, :, 2:6, 0:4], x[5, :, 2:6, 0:4])
        assert torch.equal(out.x[0, :, :2], x[0, :, :2])
        assert out.lam == pytest.approx(1 - 16 / 64)

    def test_random_box_is_seeded_and_in_bounds(self):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for _ in range(20):
            b1, b2 = rand_bbox(32, 32, 0.3, generator=g1), rand_bbox(32, 32, 0.3, generator=g2)
            assert b1 == b2
            y1, y2, x1, x2 = b1
            assert 0 <= y1 <= y2 <= 32 and 0 <= x1 <= x2 <= 32


class TestUnMixImages:
    def test_modes_and_determinism(self):
        x, _ = batch()
        glob = unmix_images(x, lam=0.3, mode="global")
        assert torch.allclose(glob.x, 0.3 * x + 0.7 * x.flip(0)) and glob.lam == 0.3
        region = unmix_images(x, lam=0.5, mode="region", box=(0, 4, 0, 8))
        assert region.lam == pytest.approx(0.5)
        a = unmix_images(x, generator=torch.Generator().manual_seed(1))
        b = unmix_images(x, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a.x, b.x) and a.lam == b.lam

    def test_global_probability(self):
        x, _ = batch()
        g = torch.Generator().manual_seed(0)
        n_global = sum(torch.allclose(r.x, r.lam * x + (1 - r.lam) * x.flip(0))
                       for r in (unmix_images(x, global_prob=0.8, generator=g) for _ in range(200)))
        assert 130 <= n_global <= 190

    def test_lam_distribution(self):
        g = torch.Generator().manual_seed(0)
        lams = torch.tensor([sample_lam(1.0, generator=g) for _ in range(2000)])
        assert 0.0 <= lams.min() and lams.max() <= 1.0 and abs(lams.mean().item() - 0.5) < 0.03
        with pytest.raises(ValueError, match="alpha"):
            sample_lam(0.0)


class TestMaskMixers:
    """Each mixer: shape, lam range, label bookkeeping, pixels from the right partner, determinism."""

    @pytest.mark.parametrize("name", ["fmix", "gridmix", "smoothmix", "saliencymix", "resizemix"])
    def test_contract(self, name):
        from hf_mixssl.models import mixing

        fn = getattr(mixing, name)
        x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        y = torch.arange(5)
        perm = torch.tensor([1, 2, 3, 4, 0])
        kwargs = {} if name == "resizemix" else {"lam": 0.6}
        if name != "saliencymix":
            kwargs["generator"] = torch.Generator().manual_seed(1)
        out = fn(x, y, perm=perm, **kwargs)
        assert out.x.shape == x.shape and 0.0 <= out.lam <= 1.0
        assert out.y_a.tolist() == y.tolist() and out.y_b.tolist() == y[perm].tolist()
        # every mixed pixel is a convex combination of the sample and its partner
        a, b = x, x[perm]
        lo, hi = torch.minimum(a, b) - 1e-5, torch.maximum(a, b) + 1e-5
        if name != "resizemix":  # resizemix pastes a resized partner: values interpolate within the partner
            assert ((out.x >= lo) & (out.x <= hi)).all()
        if name != "saliencymix":
            kwargs["generator"] = torch.Generator().manual_seed(1)
            again = fn(x, y, perm=perm, **kwargs)
            assert torch.equal(out.x, again.x) and out.lam == again.lam

    def test_fmix_keeps_exactly_lam(self):
        from hf_mixssl.models.mixing import fmix

        x = torch.zeros(2, 1, 16, 16)
        x[1] = 1.0
        out = fmix(x, lam=0.25, perm=torch.tensor([1, 0]), generator=torch.Generator().manual_seed(0))
        assert out.lam == pytest.approx(0.25)
        assert out.x[0].mean().item() == pytest.approx(0.75)  # 75% of pixels came from the all-ones partner

    def test_resizemix_pastes_whole_partner(self):
        from hf_mixssl.models.mixing import resizemix

        x = torch.zeros(2, 1, 20, 20)
        x[1] = 1.0
        out = resizemix(x, perm=torch.tensor([1, 0]), tau=0.5, generator=torch.Generator().manual_seed(0))
        # the pasted (clipped) box is all ones and lam is exactly its complement
        assert out.x[0].mean().item() == pytest.approx(1.0 - out.lam)
