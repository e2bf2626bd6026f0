import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForImageClassification

import hf_mixssl  # noqa: F401
from hf_mixssl import MixupClassifierConfig, MixupForImageClassification
from hf_mixssl.models.configuration_mixup import MIX_MODES

ALL_MODES = list(MIX_MODES)


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(backbone="test_resnet", cifar_stem=True, num_labels=5, image_size=32, mix_modes=ALL_MODES)
    base.update(kw)
    return MixupForImageClassification(MixupClassifierConfig(**base))


def data(b=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 5, (b,), generator=g)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_mode_trains_every_parameter(mode):
    model = tiny().train()
    x, y = data()
    out = model(x, y, mix_mode=mode)
    assert torch.isfinite(out.loss) and out.logits.shape == (6, 5)
    assert (out.mix_lam is None) == (mode == "vanilla")
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name


def test_mixup_loss_matches_hand_reference():
    model = tiny().train()
    x, y = data()
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    out = model(x, y, mix_mode="mixup", lam=0.3, perm=perm)
    logits = model.classifier(model.backbone(0.3 * x + 0.7 * x[perm]))
    ref = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y[perm])
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_manifoldmix_hook_is_removed_and_lam_one_is_vanilla():
    model = tiny().eval()
    x, y = data()
    plain = model(x).logits
    mixed = model._manifold_logits(x, lam=1.0, perm=torch.arange(6).flip(0), stage=1)
    assert torch.allclose(plain, mixed, atol=1e-5)
    half = model._manifold_logits(x, lam=0.5, perm=torch.arange(6).flip(0), stage=1)
    assert not torch.allclose(plain, half)
    assert torch.allclose(model(x).logits, plain)  # no hook left behind


def test_eval_mode_does_not_mix():
    model = tiny(mix_modes=["cutmix"]).eval()
    x, y = data()
    out = model(x, y)
    assert out.mix_lam is None
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-6)


def test_policy_sampling_follows_probs():
    model = tiny(mix_modes=["mixup", "cutmix"], mix_probs=[0.8, 0.2])
    g = torch.Generator().manual_seed(0)
    picks = [model.sample_mode(g) for _ in range(1000)]
    assert 740 <= picks.count("mixup") <= 860


def test_round_trip_both_auto_classes(tmp_path):
    model = tiny().eval()
    model.save_pretrained(tmp_path)
    x, _ = data()
    for auto in (AutoModelForImageClassification, AutoModel):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is MixupForImageClassification
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)


@pytest.mark.parametrize("field,value", [("mix_modes", ["mixdown"]), ("mix_probs", [1.0]),
                                         ("mix_alpha", 0.0), ("resizemix_scope", [0.5, 1.5]),
                                         ("label_smoothing", 1.0), ("num_labels", 1)])
def test_invalid_config_names_field(field, value):
    kwargs = {"mix_modes": ["mixup", "cutmix"], field: value} if field != "mix_modes" else {field: value}
    with pytest.raises(ValueError, match=field):
        MixupClassifierConfig(**kwargs)


def test_manifoldmix_stage_out_of_range():
    with pytest.raises(ValueError, match="manifoldmix_stages"):
        tiny(mix_modes=["manifoldmix"], manifoldmix_stages=[9])



def test_manifoldmix_points_are_openmixups_layers():
    """OpenMixup ResNet_Mix: layer 0 mixes the input; layer k >= 1 mixes the output of residual stage k
    (``if i + 1 == layer: x = mix(x)`` after each res layer). Hand copy of that forward on the timm ResNet."""
    model = tiny().eval()
    x, _ = data()
    perm, lam = torch.arange(6).flip(0), 0.3

    def mix(h):
        return h * lam + h[perm] * (1.0 - lam)

    def resnet_mix(img, layer):
        b = model.backbone
        if layer == 0:
            img = mix(img)
        h = b.maxpool(b.act1(b.bn1(b.conv1(img))))
        for i, res_layer in enumerate((b.layer1, b.layer2, b.layer3, b.layer4)):
            h = res_layer(h)
            if i + 1 == layer:
                h = mix(h)
        return model.classifier(b.forward_head(h, pre_logits=True))

    for layer in (0, 1, 2):
        ours = model._manifold_logits(x, lam=lam, perm=perm, stage=layer)
        assert torch.allclose(ours, resnet_mix(x, layer), atol=1e-5), layer
