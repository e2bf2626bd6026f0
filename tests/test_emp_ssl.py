"""EMP-SSL: the TCR and invariance terms, the batched multi-patch generator, the model, multi-rank semantics."""

import os
import subprocess
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF
from transformers import AutoModel

import hf_mixssl  # noqa: F401
from conftest import two_process_launch
from hf_mixssl import EMPSSLConfig, EMPSSLModel
from hf_mixssl.models.losses import emp_ssl_terms, total_coding_rate
from hf_mixssl.models.multipatch import MultiPatchViews
from hf_mixssl.models.pixel_ops import EAGER


class TestLosses:
    @pytest.mark.parametrize("b,d", [(6, 16), (16, 6), (8, 8)])
    def test_tcr_closed_form(self, b, d):
        z = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=1)
        expected = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (b * 0.2) * z.t() @ z)
        assert total_coding_rate(z, eps=0.2).item() == pytest.approx(expected.item(), rel=1e-5)

    def test_tcr_finite_for_rank_deficient_input(self):
        one = F.normalize(torch.ones(32, 64), dim=1)  # rank 1: every row identical
        value = total_coding_rate(one, eps=0.2)
        # rank one: logdet(I + c Z^T Z) = log(1 + c * b) with c = d / (b eps)
        assert value.item() == pytest.approx(0.5 * torch.log(torch.tensor(1 + 64 / 0.2)).item(), rel=1e-5)
        assert torch.isfinite(total_coding_rate(torch.zeros(8, 16), eps=0.2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(total_coding_rate(torch.randn(100, 1024).bfloat16(), eps=0.2))

    def test_invariance_and_tcr_match_the_official_loops(self):
        n, b, d = 5, 7, 12
        z = F.normalize(torch.randn(n, b, d), dim=-1)
        invariance, tcr = emp_ssl_terms(z, eps=0.2)
        # Similarity_Loss and cal_TCR from the official main.py, written out
        z_avg = z.mean(dim=0)
        ref_inv = -sum(F.cosine_similarity(z[i], z_avg, dim=1).mean() for i in range(n)) / n
        ref_tcr = 0
        for i in range(n):
            w = z[i].t()  # [d, b]
            ref_tcr += -0.5 * torch.logdet(torch.eye(d) + d / (b * 0.2) * w @ w.t())
        assert invariance.item() == pytest.approx(ref_inv.item(), abs=1e-6)
        assert tcr.item() == pytest.approx((ref_tcr / n).item(), rel=1e-5)


class TestMultiPatchViews:
    def test_shapes_distinct_patches_and_determinism(self):
        images = torch.rand(5, 3, 32, 32)
        views = MultiPatchViews(num_patches=6)
        a = views(images, generator=torch.Generator().manual_seed(0))
        b = views(images, generator=torch.Generator().manual_seed(0))
        assert a.shape == (30, 3, 32, 32) and torch.equal(a, b)
        per_image = a.view(6, 5, -1)
        for img in range(5):
            distinct = {tuple(per_image[i, img, :50].tolist()) for i in range(6)}
            assert len(distinct) == 6
        assert not torch.equal(a, views(images, generator=torch.Generator().manual_seed(1)))

    def test_patches_do_not_depend_on_the_cpu_chunking(self, monkeypatch):
        from hf_mixssl.models import pixel_ops

        images = torch.rand(4, 3, 32, 32)
        views = MultiPatchViews(num_patches=5, blur_p=0.5, solarize_p=0.5)
        whole = views(images, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(pixel_ops, "CPU_CHUNK_BYTES", 3 * 3 * 32 * 32 * 4)  # three patches a chunk
        assert torch.allclose(views(images, generator=torch.Generator().manual_seed(0)), whole, atol=1e-6)

    def test_crop_takes_a_quarter_of_the_right_image(self):
        images = torch.rand(3, 3, 32, 32)
        views = MultiPatchViews(num_patches=4, flip_p=0.0)
        patches = views.crops(images, torch.Generator().manual_seed(0)).view(4, 3, 3, 32, 32)
        for i in range(4):
            for b in range(3):
                # the patch is a bilinear 2x upsampling of some 16x16 window of image b
                found = False
                for top in range(17):
                    for left in range(17):
                        window = images[b:b + 1, :, top:top + 16, left:left + 16]
                        up = F.interpolate(window, size=32, mode="bilinear", align_corners=False)
                        # border pixels sample outside the window (grid_sample reads the neighbours)
                        if torch.allclose(up[..., 1:-1, 1:-1], patches[i, b:b + 1, :, 1:-1, 1:-1], atol=1e-5):
                            found = True
                assert found

    @pytest.mark.parametrize("op,fn,f", [(0, TF.adjust_brightness, 1.3), (1, TF.adjust_contrast, 0.7),
                                         (2, TF.adjust_saturation, 1.4), (3, TF.adjust_hue, -0.15)])
    def test_jitter_ops_match_torchvision(self, op, fn, f):
        x = torch.rand(4, 3, 16, 16)
        order = torch.tensor([op] + [o for o in range(4) if o != op]).repeat(4, 1)
        on = torch.tensor([True, True, False, True])
        factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(4, 1)  # the other three ops are the identity
        factors[:, op] = f
        out = EAGER.color_jitter(x.clone(), factors, order, on)
        assert torch.allclose(out[on], fn(x[on], f), atol=1e-4) and torch.equal(out[2], x[2])

    def test_runs_fp32_under_bf16_autocast(self):
        images = torch.rand(8, 3, 32, 32)
        views = MultiPatchViews(num_patches=4, blur_p=1.0)  # the blur is a convolution: autocast would make it bf16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = views(images, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.float32
        assert torch.equal(out, views(images, generator=torch.Generator().manual_seed(0)))

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="RGB images"):
            MultiPatchViews()(torch.rand(2, 1, 32, 32))
        with pytest.raises(ValueError, match="crop_scale"):
            MultiPatchViews(crop_scale=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(backbone="test_resnet", hidden_dim=64, z_dim=32, num_patches=4, eval_patches=3)
    base.update(kw)
    return EMPSSLModel(EMPSSLConfig(**base))


class TestModel:
    def test_gradients_reach_every_trainable_parameter(self):
        model = tiny().train()
        out = model(torch.rand(6, 3, 32, 32))
        assert out.embeddings.shape == (4, 6, 32)
        assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(4, 6), atol=1e-5)
        assert out.loss.item() == pytest.approx(200 * out.loss_invariance.item() + out.loss_tcr.item(), rel=1e-5)
        out.loss.backward()
        assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []

    def test_bag_of_features_is_deterministic_and_leaves_the_global_rng_alone(self):
        model = tiny().eval()
        x = torch.rand(3, 3, 32, 32)
        state = torch.get_rng_state()
        a = model.extract_features(x)
        assert torch.equal(torch.get_rng_state(), state)
        assert a.shape == (3, 64) and torch.equal(a, model.extract_features(x))
        model.config.eval_features = "backbone"
        assert model.extract_features(x, num_patches=0).shape == (3, model.backbone.num_features)

    def test_round_trip(self, tmp_path):
        model = tiny().eval()
        model.save_pretrained(tmp_path)
        loaded = AutoModel.from_pretrained(tmp_path).eval()
        assert type(loaded) is EMPSSLModel
        x = torch.rand(2, 3, 32, 32)
        assert torch.allclose(loaded.extract_features(x), model.extract_features(x), atol=1e-5)

    @pytest.mark.parametrize("field,value", [("num_patches", 1), ("tcr_eps", 0.0), ("eval_features", "projection"),
                                             ("crop_scale", 1.5)])
    def test_invalid_config(self, field, value):
        with pytest.raises(ValueError, match=field):
            EMPSSLConfig(**{field: value})


def test_two_ranks_give_the_single_device_gradient(tmp_path):
    """Each rank holds half the images (all of their patches); TCR is computed on the gathered global chunks and
    DDP averages gradients: the result must equal one device holding the whole batch."""
    script = tmp_path / "emp_ranks.py"
    script.write_text(textwrap.dedent('''
        import torch, torch.distributed as dist, torch.nn.functional as F
        from accelerate import Accelerator
        from hf_mixssl.models.distributed import gather_with_grad
        from hf_mixssl.models.losses import emp_ssl_terms

        state = Accelerator()  # (a bare PartialState reported process_index 0 on both CPU ranks here)
        torch.manual_seed(0)
        n, b, d_in, d = 4, 8, 10, 6
        x = torch.randn(n, b, d_in)
        w = torch.randn(d_in, d, requires_grad=True)

        def loss_of(inputs, gather):
            z = F.normalize(inputs @ w, dim=-1)
            inv, tcr = emp_ssl_terms(z, eps=0.2, gather=gather)
            return 200 * inv + tcr

        loss_of(x, None).backward()
        single = w.grad.clone()
        w.grad = None
        half = b // 2
        local = x[:, state.process_index * half:(state.process_index + 1) * half]
        loss_of(local, gather_with_grad).backward()
        dist.all_reduce(w.grad)
        w.grad /= dist.get_world_size()  # what DDP does
        assert torch.allclose(w.grad, single, atol=1e-4), (w.grad - single).abs().max()
        if state.is_main_process:
            print("MATCH")
    '''))
    proc = subprocess.run(two_process_launch() + [str(script)], env={**os.environ, "ACCELERATE_USE_CPU": "true"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "MATCH" in proc.stdout, proc.stderr[-3000:]
