"""A saved run directory loads in a process without hf_mixssl (`trust_remote_code=True`), under every Auto class
the method registers: the modeling code travels with the weights."""

import pytest
import torch

from conftest import check_loads_without_hf_mixssl
from transformers import AutoModel

from hf_mixssl import (AutoMixConfig, AutoMixModel, EMPSSLConfig, EMPSSLModel, MAEConfig, MAEModel,
                       MixupClassifierConfig, MixupForImageClassification, MoCoConfig, MoCoModel)

TINY = dict(backbone="test_resnet", cifar_stem=True, image_size=32)
CASES = [
    ("AutoModel", lambda: MoCoModel(MoCoConfig(version=2, queue_size=32, proj_dim=16, **TINY))),
    ("AutoModel", lambda: MixupForImageClassification(MixupClassifierConfig(num_labels=5, **TINY))),
    ("AutoModelForImageClassification",
     lambda: MixupForImageClassification(MixupClassifierConfig(num_labels=5, **TINY))),
    ("AutoModel", lambda: AutoMixModel(AutoMixConfig(num_labels=5, **TINY))),
    ("AutoModelForImageClassification", lambda: AutoMixModel(AutoMixConfig(num_labels=5, **TINY))),
    ("AutoModel", lambda: MAEModel(MAEConfig(backbone="vit_tiny_patch16_224", image_size=32, decoder_embed_dim=32,
                                             decoder_depth=1, decoder_num_heads=4,
                                             backbone_kwargs={"patch_size": 8, "depth": 1}))),
    ("AutoModel", lambda: EMPSSLModel(EMPSSLConfig(backbone="test_resnet", hidden_dim=32, z_dim=16, num_patches=2,
                                                   eval_patches=2))),
]


@pytest.mark.parametrize("auto_class,build", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_loads_with_trust_remote_code_without_hf_mixssl(tmp_path, auto_class, build):
    torch.manual_seed(0)
    model = build().eval()
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    features = isinstance(model, (MoCoModel, MAEModel, EMPSSLModel))  # self-supervised: features; classifiers: logits
    expected = model.extract_features(x) if features else model(x).logits
    module = check_loads_without_hf_mixssl(tmp_path, auto_class, x, expected, features=features)
    assert module.startswith("transformers_modules")


@pytest.mark.parametrize("build", [CASES[0][1], CASES[3][1], CASES[5][1]], ids=["moco", "automix", "mae"])
def test_frozen_parameters_stay_frozen_after_from_pretrained(tmp_path, build):
    """Momentum encoders and MAE's fixed positions: transformers 5 would load them as trainable."""
    model = build()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert {n for n, p in loaded.named_parameters() if not p.requires_grad} == frozen
