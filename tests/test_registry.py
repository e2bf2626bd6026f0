"""Every registered method, through the registry alone: gradients, save/load, trust_remote_code, cards, flags;
a method defined here joins through one registry entry; a wheel install (no -e) runs and renders cards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import REPO, check_loads_without_hf_mixssl, run_pretrain, tiny_run
from hf_mixssl.methods import Method, Paper, get_method, list_methods, register_method, unregister_method

METHODS = list_methods()


def tiny_model(name: str):
    """The method's model built from its registry entry's tiny setting (config fields only)."""
    from hf_mixssl.train.arguments import settings_of

    entry = get_method(name)
    values = settings_of(entry, {**entry.defaults, **entry.tiny})
    if entry.supervised:
        values.setdefault("num_labels", 10)
    return entry.model_class(entry.make_config(**values))


@pytest.fixture(scope="module")
def batches(cifar10) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Real CIFAR-10 images through each method's own view recipe: what the training loop feeds it."""
    from datasets import load_dataset

    from hf_mixssl.data.views import CIFAR10_MEAN, CIFAR10_STD, view_transform

    rows = list(load_dataset(cifar10, split="test", streaming=True).take(4))
    labels = torch.tensor([r["label"] for r in rows])
    out = {}
    for name in METHODS:
        views = view_transform(get_method(name).views, size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        torch.manual_seed(0)
        x = views.finish(torch.stack([views(r["img"].convert("RGB")) for r in rows]))
        out[name] = (x if x.shape[1] > 1 else x[:, 0], labels)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_every_trainable_parameter_gets_a_gradient(name, batches):
    torch.manual_seed(0)
    model = tiny_model(name).train()
    x, y = batches[name]
    output = model(pixel_values=x, labels=y)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
        else:
            assert p.grad is None, f"{name}: frozen {pname} got a gradient"
    assert model.update_momentum(0.5) is None or 0.0 <= model.update_momentum(0.5) <= 1.0


@pytest.mark.parametrize("name", METHODS)
def test_save_load_round_trip(name, tmp_path, batches):
    import hf_mixssl  # noqa: F401  (Auto classes)
    from transformers import AutoModel

    torch.manual_seed(0)
    model = tiny_model(name).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    x = batches[name][0]
    x = x[:, 0] if x.ndim == 5 else x
    torch.manual_seed(1)  # EMP-SSL's bag of features draws patches
    a = model.extract_features(x)
    torch.manual_seed(1)
    assert torch.allclose(a, loaded.extract_features(x), atol=1e-5)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {n for n, p in loaded.named_parameters() if not p.requires_grad} == frozen


@pytest.mark.parametrize("name,auto_class", [(n, a) for n in METHODS for a in get_method(n).auto_classes])
def test_loads_with_trust_remote_code_without_hf_mixssl(name, auto_class, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    features = not get_method(name).supervised  # self-supervised: features; classifiers: logits
    torch.manual_seed(1)
    expected = model.extract_features(x) if features else model(x).logits
    module = check_loads_without_hf_mixssl(tmp_path, auto_class, x, expected, features=features)
    assert module.startswith("transformers_modules")


@pytest.mark.parametrize("name", METHODS)
def test_card_of_every_method(name, tmp_path):
    from huggingface_hub import ModelCard

    from hf_mixssl.sharing.cards import render_model_card

    entry = get_method(name)
    model = tiny_model(name)
    model.save_pretrained(tmp_path)
    (tmp_path / "eval_results.json").write_text(json.dumps({"global_step": 3, "knn_top1": 0.25}))
    card = render_model_card(tmp_path, model=model)
    assert "{{" not in card.content and "{%" not in card.content
    assert entry.paper.url in card.content and entry.paper.bibtex.split("{")[1].split(",")[0] in card.content
    assert card.data.pipeline_tag == ("image-classification" if entry.supervised else "image-feature-extraction")
    assert ModelCard(str(card)).data.model_name == tmp_path.name


@pytest.mark.parametrize("name", METHODS)
def test_every_setting_is_a_documented_flag(name):
    from hf_mixssl.train.arguments import build_parser, method_settings

    entry = get_method(name)
    settings = method_settings(entry)
    assert settings, name
    for field, f in settings.items():
        assert f.help, f"{entry.config_class.__name__}.{field} has no docstring entry"
    text = build_parser(name).format_help()
    for field in settings:
        assert f"--{field}" in text
    for fixed in entry.fixed:
        assert f"--{fixed} " not in text  # fixed by the method name


def test_every_preset_keeps_its_values():
    """A preset's values reach the arguments or the model config unchanged (a one-element list may become the
    scalar a field takes)."""
    import dataclasses

    from hf_mixssl.train.arguments import parse_args
    from hf_mixssl.train.presets import PRESETS

    for preset, values in PRESETS.items():
        args = parse_args(["--preset", preset, "--max_steps", "1"])
        entry = get_method(args.method)
        config = entry.make_config(**args.model_settings).to_dict()
        names = {f.name for f in dataclasses.fields(args)}
        for key, value in values.items():
            got = getattr(args, key) if key in names else config[key]
            if isinstance(value, list) and len(value) == 1 and not isinstance(got, list):
                value = value[0]
            assert got == value, f"{preset}: {key} = {got!r}, preset says {value!r}"


def test_flags_of_another_method_are_named(capsys):
    from hf_mixssl.train.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--method", "moco_v2", "--mask_ratio", "0.5", "--max_steps", "1"])
    err = capsys.readouterr().err
    assert "--mask_ratio is a setting of mae, not of moco_v2" in err and len(err.splitlines()) <= 3
    with pytest.raises(ValueError, match="did you mean moco_v2"):
        get_method("moco_2")


# ---------------------------------------------------------------------------------------------- a new method
ROTNET_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ method_name }}: a `{{ backbone }}` learns by predicting which of {{ num_rotations }} rotations was applied.

## Results

{{ results_table }}

## References

[{{ paper_title }}]({{ paper_url }})

```bibtex
{{ bibtex }}
```
"""


def _rotnet_classes():
    """RotNet (Gidaris et al., ICLR 2018), defined outside the package as a user would: a config and a model."""
    import torch.nn.functional as F
    from dataclasses import dataclass
    from torch import nn
    from transformers import PretrainedConfig
    from transformers.utils import ModelOutput

    from hf_mixssl.models.backbones import create_backbone, pooled_features
    from hf_mixssl.models.config_fields import set_backbone_fields
    from hf_mixssl.models.pretrained import VisionPreTrainedModel, single_view

    class RotNetConfig(PretrainedConfig):
        r"""RotNet.

        Args:
            backbone (`str`, defaults to `"resnet18"`): any timm model name.
            backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` arguments.
            cifar_stem (`bool`, defaults to `False`): 3x3 stride-1 ResNet stem.
            image_size (`int`, defaults to 32): training resolution.
            image_mean (`list[float]`, *optional*): normalisation mean.
            image_std (`list[float]`, *optional*): normalisation std.
            num_rotations (`int`, defaults to 4): rotations by multiples of 360 / num_rotations degrees (4 = 90).
        """

        model_type = "test_rotnet"

        def __init__(self, *, backbone: str = "resnet18", backbone_kwargs: dict[str, Any] | None = None,
                     cifar_stem: bool = False, image_size: int = 32, image_mean: list[float] | None = None,
                     image_std: list[float] | None = None, num_rotations: int = 4, **kwargs: Any) -> None:
            if num_rotations not in (2, 4):
                raise ValueError(f"num_rotations must be 2 or 4, got {num_rotations!r}")
            set_backbone_fields(self, backbone=backbone, backbone_kwargs=backbone_kwargs, cifar_stem=cifar_stem,
                                image_size=image_size, image_mean=image_mean, image_std=image_std)
            self.num_rotations = num_rotations
            super().__init__(**kwargs)

    @dataclass
    class RotNetOutput(ModelOutput):
        loss: torch.Tensor | None = None
        accuracy: torch.Tensor | None = None

    class RotNetModel(VisionPreTrainedModel):
        config_class = RotNetConfig
        base_model_prefix = "rotnet"

        def __init__(self, config: RotNetConfig) -> None:
            super().__init__(config)
            self.backbone = create_backbone(config.backbone, cifar_stem=config.cifar_stem, **config.backbone_kwargs)
            self.head = nn.Linear(self.backbone.num_features, config.num_rotations)
            self.post_init()

        def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pooled_features(self.backbone, single_view(pixel_values))

        def get_encoder(self) -> nn.Module:
            return self.backbone

        def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> RotNetOutput:
            x = single_view(pixel_values)
            step = 4 // self.config.num_rotations
            rotated = torch.cat([torch.rot90(x, k * step, dims=(2, 3)) for k in range(self.config.num_rotations)])
            target = torch.arange(self.config.num_rotations, device=x.device).repeat_interleave(x.shape[0])
            logits = self.head(self.extract_features(rotated))
            return RotNetOutput(loss=F.cross_entropy(logits, target),
                                accuracy=(logits.argmax(-1) == target).float().mean())

    return RotNetConfig, RotNetModel


@pytest.fixture
def rotnet(tmp_path):
    config_cls, model_cls = _rotnet_classes()
    template = tmp_path / "rotnet.md"
    template.write_text(ROTNET_TEMPLATE)
    entry = register_method(Method(
        name="rotnet", config_class=config_cls, model_class=model_cls, views="classify",
        card_template=str(template), defaults={"learning_rate": 0.1},
        paper=Paper("RotNet", "Unsupervised Representation Learning by Predicting Image Rotations",
                    "https://arxiv.org/abs/1803.07728", "https://github.com/gidariss/FeatureLearningRotNet",
                    "@inproceedings{gidaris2018unsupervised,\n  title={Unsupervised Representation Learning by "
                    "Predicting Image Rotations},\n  booktitle={ICLR},\n  year={2018}\n}"),
        tiny={"backbone": "test_resnet", "image_size": 32},
    ))
    try:
        yield entry
    finally:
        unregister_method("rotnet")


def test_a_method_joins_through_one_registry_entry(rotnet, tmp_path, cifar10):
    from huggingface_hub import ModelCard
    from transformers import AutoModel

    from hf_mixssl.train.arguments import build_parser, parse_args

    assert "rotnet" in list_methods()
    assert "--num_rotations" in build_parser().format_help()
    args = parse_args(["--method", "rotnet", "--num_rotations", "2", "--max_steps", "2"])
    assert args.model_settings == {"num_rotations": 2} and args.learning_rate == 0.1 and args.views == "classify"
    out = tmp_path / "run"
    result = run_pretrain(tiny_run(out, cifar10, method="rotnet", max_steps=2, num_rotations=2, knn_every=0,
                                   knn_train_samples=64, knn_test_samples=32))
    assert result["global_step"] == 2 and 0.0 <= result["knn_top1"] <= 1.0
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert "accuracy" in logged[0]  # every loss term of the output is logged
    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "RotNetModel" and model.config.num_rotations == 2
    card = ModelCard.load(out / "README.md")
    assert "predicting which of 2 rotations" in card.content and "1803.07728" in card.content


def test_wheel_install_renders_cards_and_runs_the_console_entry_point(tmp_path, cifar10):
    """`pip install .` (not editable): templates and metric modules are package data; entry points work."""
    import shutil

    wheels, site, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # A copy, so that the build writes its build/ and egg-info there, not into the checkout.
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("hf_mixssl-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "hf_mixssl" / "sharing" / "templates" / "moco.md").is_file()
    assert (site / "hf_mixssl" / "evaluation" / "metrics" / "accuracy" / "accuracy.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import hf_mixssl; print(hf_mixssl.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    out = tmp_path / "run"
    cmd = [str(site / "bin" / "hf-mixssl-pretrain"), "--method", "moco_v2", "--dataset", cifar10,
           "--backbone", "test_resnet", "--image_size", "32", "--views", "moco_cifar", "--queue_size", "64",
           "--per_device_batch_size", "16", "--max_steps", "2", "--knn_train_samples", "64",
           "--knn_test_samples", "32", "--num_workers", "0", "--report_to", "none", "--output_dir", str(out)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "template" not in run.stderr and json.loads(run.stdout.strip().splitlines()[-1])["global_step"] == 2
    card = (out / "README.md").read_text()
    assert "kNN top-1" in card and "-m hf_mixssl.cli.pretrain" in card  # the card's command is what was run


# ------------------------------------------------------------------------------------------ HF-native use
@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, cifar10) -> dict[str, Path]:
    """A real 1-step run of every method (saved model, image processor, card)."""
    runs = {}
    for name in METHODS:
        out = tmp_path_factory.mktemp("runs") / name
        run_pretrain(tiny_run(out, cifar10, method=name, max_steps=1, knn_every=-1))
        runs[name] = out
    return runs


@pytest.mark.parametrize("name", METHODS)
def test_run_dirs_work_with_auto_image_processor_and_pipelines(name, run_dirs, cifar10):
    from datasets import load_dataset
    from transformers import AutoImageProcessor, AutoModel, pipeline

    run = run_dirs[name]
    image = next(iter(load_dataset(cifar10, split="test", streaming=True)))["img"]
    processor = AutoImageProcessor.from_pretrained(run)
    x = processor(image, return_tensors="pt")["pixel_values"]
    model = AutoModel.from_pretrained(run).eval()
    assert x.shape == (1, 3, 32, 32)
    if get_method(name).supervised:
        result = pipeline("image-classification", model=str(run))(image)
        names = set(load_dataset(cifar10, split="test", streaming=True).features["label"].names)
        assert {r["label"] for r in result} <= names  # the dataset's class names, not LABEL_3
        card = (run / "README.md").read_text()
        assert "pipeline_tag: image-classification" in card
    else:
        features = pipeline("image-feature-extraction", model=str(run))(image, return_tensors=True)
        torch.manual_seed(0)
        expected = model.extract_features(x)
        assert features.shape == expected.shape
        if name != "emp_ssl":  # EMP-SSL's bag of features draws its patches from a private generator per call
            assert torch.allclose(features, expected, atol=1e-5)
        assert "pipeline_tag: image-feature-extraction" in (run / "README.md").read_text()


def test_feature_pipeline_without_hf_mixssl(run_dirs, cifar10, tmp_path):
    """The card's pipeline snippet, run as written where hf_mixssl cannot be imported (trust_remote_code): the
    processor is a stock transformers one, the model's code travels with the weights."""
    import re

    from datasets import load_dataset

    run = run_dirs["moco_v2"]
    next(iter(load_dataset(cifar10, split="test", streaming=True)))["img"].save(tmp_path / "image.jpg")
    card = (run / "README.md").read_text()
    snippet = re.search(r"With a pipeline.*?```python\n(.*?)```", card, re.S).group(1)
    code = "import sys\nsys.modules['hf_mixssl'] = None\n" + snippet + "print('SHAPE', tuple(features.shape))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SHAPE (1, 96)" in proc.stdout


def test_training_forward_is_unchanged_by_the_inference_path():
    """Train mode (or return_loss=True) still computes the loss on plain images for MAE and EMP-SSL."""
    for name in ("mae", "emp_ssl"):
        model = tiny_model(name).eval()
        out = model(pixel_values=torch.randn(2, 3, 32, 32), return_loss=True)
        assert out.loss is not None and out.features is None
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).features.shape[0] == 2
