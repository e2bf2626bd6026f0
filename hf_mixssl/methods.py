"""The method registry: the one place that lists the methods (timm's ``list_models()`` pattern).

Each :class:`Method` entry says everything the machinery around a method needs: the ``--method`` name, the
config and model classes, the config values the name fixes (MoCo's ``version``), the method's default
settings (model and training), its view recipe, whether it trains on labels, the Auto classes it loads
under, its model-card template and paper, and a tiny setting for tests. The training loop, the argument
parser, the model cards, the Auto-class registration, ``hf-mixssl-evaluate`` and the parametrised tests all
look methods up here.

Adding a method: ``models/configuration_<m>.py`` + ``models/modeling_<m>.py``, a card template in
``sharing/templates/<m>.md`` and one :func:`register_method` call (below, or in your own code before
parsing arguments). The modeling files never import this module, so nothing changes for code that travels
with the weights (``trust_remote_code``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .models.configuration_automix import AutoMixConfig
from .models.configuration_emp_ssl import EMPSSLConfig
from .models.configuration_mae import MAEConfig
from .models.configuration_mixup import MixupClassifierConfig
from .models.configuration_moco import MoCoConfig
from .models.modeling_automix import AutoMixModel
from .models.modeling_emp_ssl import EMPSSLModel
from .models.modeling_mae import MAEModel
from .models.modeling_mixup import MixupForImageClassification
from .models.modeling_moco import MoCoModel


@dataclass(frozen=True)
class Paper:
    """What a model card cites: the method's display name, paper title and link, official code, BibTeX."""

    name: str
    title: str
    url: str
    repo: str
    bibtex: str


@dataclass(frozen=True)
class Method:
    """One ``--method``.

    Attributes:
        name: the ``--method`` value.
        config_class / model_class: the ``PretrainedConfig`` and ``PreTrainedModel`` subclasses.
        views: the default view recipe (``hf_mixssl.data.views.view_transform``).
        paper: what the model card cites.
        card_template: a template name under ``hf_mixssl/sharing/templates`` (without ``.md``), or the path of
            a ``.md`` template (a method defined outside the package).
        fixed: config values the method name fixes; they are not flags (``moco_v2`` is ``version=2``).
        defaults: the method's settings that differ from the config and argument defaults (model and training
            settings in one flat mapping, applied below any preset).
        supervised: trains on labels (the loop counts classes and evaluates top-1 instead of kNN).
        auto_classes: the transformers Auto classes the model registers under.
        tiny: flat settings for a fast real run in the tests (a tiny backbone at 32 px).
    """

    name: str
    config_class: type
    model_class: type
    views: str
    paper: Paper
    card_template: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    supervised: bool = False
    auto_classes: tuple[str, ...] = ("AutoModel",)
    tiny: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("fixed", "defaults", "tiny"):  # entries are shared: nobody may edit them in place
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def make_config(self, **settings: Any):
        """The method's config from its own settings (the values the method name fixes added)."""
        return self.config_class(**self.fixed, **settings)

    def matches(self, config: Mapping[str, Any]) -> bool:
        """Whether a saved ``config.json`` (as a dict) is a model of this method."""
        return config.get("model_type") == self.config_class.model_type and all(
            config.get(k) == v for k, v in self.fixed.items())


_METHODS: dict[str, Method] = {}


def register_auto_classes(method: Method) -> None:
    """Register ``method``'s config and model with ``AutoConfig`` and its Auto classes (idempotent), and mark
    them so that ``save_pretrained`` ships their code with the weights."""
    import transformers

    config_cls, model_cls = method.config_class, method.model_class
    transformers.AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    config_cls.register_for_auto_class()
    for auto_name in method.auto_classes:
        getattr(transformers, auto_name).register(config_cls, model_cls, exist_ok=True)
        model_cls.register_for_auto_class(auto_name)


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    """Add ``method`` to the registry and the transformers Auto classes (``overwrite=True`` replaces an entry
    of the same name)."""
    if method.name in _METHODS and not overwrite:
        raise ValueError(f"method {method.name!r} is already registered")
    _METHODS[method.name] = method
    register_auto_classes(method)
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def list_methods(*, supervised: bool | None = None) -> list[str]:
    """The registered ``--method`` names, in registration order (optionally only (un)supervised ones)."""
    return [n for n, m in _METHODS.items() if supervised is None or m.supervised == supervised]


def get_method(name: str) -> Method:
    """The entry of ``name``; an unknown name is a ``ValueError`` naming the closest registered ones."""
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}{hint} (registered: {', '.join(_METHODS)})")
    return _METHODS[name]


def method_of_config(config: Mapping[str, Any]) -> Method:
    """The method a saved ``config.json`` (as a dict) belongs to."""
    for method in _METHODS.values():
        if method.matches(config):
            return method
    raise ValueError(f"config.json model_type {config.get('model_type')!r} is not a registered hf_mixssl method")


def config_classes() -> list[type]:
    """Each registered config class once (MoCo v1/v2/v3 share one), in registration order."""
    return list(dict.fromkeys(m.config_class for m in _METHODS.values()))


# ------------------------------------------------------------------------------------------- the entries
_MOCO_REPO = "https://github.com/facebookresearch/moco"
_TINY_RESNET = {"backbone": "test_resnet", "image_size": 32}
_TINY_MOCO = {**_TINY_RESNET, "views": "moco_cifar", "queue_size": 64, "bn_splits": 2}
_TINY_CLASSIFIER = {**_TINY_RESNET, "views": "classify"}

register_method(Method(
    name="moco_v1", config_class=MoCoConfig, model_class=MoCoModel, views="moco_v1", card_template="moco",
    fixed={"version": 1}, defaults={"proj_num_layers": 1, "tau": 0.07},
    paper=Paper("MoCo v1", "Momentum Contrast for Unsupervised Visual Representation Learning",
                "https://arxiv.org/abs/1911.05722", _MOCO_REPO,
                "@inproceedings{he2020momentum,\n  title={Momentum Contrast for Unsupervised Visual Representation "
                "Learning},\n  author={He, Kaiming and Fan, Haoqi and Wu, Yuxin and Xie, Saining and Girshick, "
                "Ross},\n  booktitle={CVPR},\n  year={2020}\n}"),
    tiny=_TINY_MOCO,
))
register_method(Method(
    name="moco_v2", config_class=MoCoConfig, model_class=MoCoModel, views="moco_v2", card_template="moco",
    fixed={"version": 2}, defaults={"proj_num_layers": 2, "tau": 0.2},
    paper=Paper("MoCo v2", "Improved Baselines with Momentum Contrastive Learning",
                "https://arxiv.org/abs/2003.04297", _MOCO_REPO,
                "@article{chen2020improved,\n  title={Improved Baselines with Momentum Contrastive Learning},\n  "
                "author={Chen, Xinlei and Fan, Haoqi and Girshick, Ross and He, Kaiming},\n  "
                "journal={arXiv preprint arXiv:2003.04297},\n  year={2020}\n}"),
    tiny=_TINY_MOCO,
))
register_method(Method(
    name="moco_v3", config_class=MoCoConfig, model_class=MoCoModel, views="moco_v3", card_template="moco",
    fixed={"version": 3},
    defaults={"proj_num_layers": 2, "proj_hidden_dim": 4096, "proj_dim": 256, "tau": 1.0, "momentum": 0.99,
              "momentum_schedule": "cosine", "sync_bn": True},
    paper=Paper("MoCo v3", "An Empirical Study of Training Self-Supervised Vision Transformers",
                "https://arxiv.org/abs/2104.02057", "https://github.com/facebookresearch/moco-v3",
                "@inproceedings{chen2021empirical,\n  title={An Empirical Study of Training Self-Supervised Vision "
                "Transformers},\n  author={Chen, Xinlei and Xie, Saining and He, Kaiming},\n  booktitle={ICCV},\n"
                "  year={2021}\n}"),
    tiny={**_TINY_RESNET, "views": "moco_cifar", "proj_hidden_dim": 32, "pred_hidden_dim": 32, "proj_dim": 16},
))
register_method(Method(
    name="mixup", config_class=MixupClassifierConfig, model_class=MixupForImageClassification, views="classify",
    card_template="mixup", supervised=True, auto_classes=("AutoModel", "AutoModelForImageClassification"),
    defaults={"mix_modes": ["mixup"], "mix_alpha": [1.0]},
    paper=Paper("Mixup family", "mixup: Beyond Empirical Risk Minimization", "https://arxiv.org/abs/1710.09412",
                "https://github.com/Westlake-AI/openmixup",
                "@inproceedings{zhang2018mixup,\n  title={mixup: Beyond Empirical Risk Minimization},\n  author={Zhang, "
                "Hongyi and Cisse, Moustapha and Dauphin, Yann N. and Lopez-Paz, David},\n  booktitle={ICLR},\n  "
                "year={2018}\n}"),
    tiny=_TINY_CLASSIFIER,
))
register_method(Method(
    name="automix", config_class=AutoMixConfig, model_class=AutoMixModel, views="classify", card_template="automix",
    supervised=True, auto_classes=("AutoModelForImageClassification", "AutoModel"),
    paper=Paper("AutoMix", "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers",
                "https://arxiv.org/abs/2103.13027", "https://github.com/Westlake-AI/openmixup",
                "@inproceedings{liu2022automix,\n  title={AutoMix: Unveiling the Power of Mixup for Stronger "
                "Classifiers},\n  author={Liu, Zicheng and Li, Siyuan and Wu, Di and Liu, Zihan and Chen, Zhiyuan "
                "and Wu, Lirong and Li, Stan Z.},\n  booktitle={ECCV},\n  year={2022}\n}"),
    tiny=_TINY_CLASSIFIER,
))
register_method(Method(
    name="mae", config_class=MAEConfig, model_class=MAEModel, views="mae", card_template="mae",
    # main_pretrain.py: AdamW (0.9, 0.95), blr 1.5e-4 x B/256, wd 0.05 except biases, norms and tokens,
    # warmup + cosine.
    defaults={"optimizer": "adamw", "adam_betas": [0.9, 0.95], "learning_rate": 1.5e-4, "scale_lr": True,
              "weight_decay": 0.05, "exclude_bias_norm_wd": True, "lr_schedule": "cosine"},
    paper=Paper("MAE", "Masked Autoencoders Are Scalable Vision Learners", "https://arxiv.org/abs/2111.06377",
                "https://github.com/facebookresearch/mae",
                "@inproceedings{he2022masked,\n  title={Masked Autoencoders Are Scalable Vision Learners},\n  "
                "author={He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and "
                "Girshick, Ross},\n  booktitle={CVPR},\n  year={2022}\n}"),
    tiny={"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"patch_size": 8, "depth": 1}, "image_size": 32,
          "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 4, "learning_rate": 1e-3,
          "scale_lr": False},
))
register_method(Method(
    name="emp_ssl", config_class=EMPSSLConfig, model_class=EMPSSLModel, views="emp_ssl", card_template="emp_ssl",
    # main.py: LARS (eta 0.005, clipped, no adaptation of biases/norms) around Nesterov SGD lr 0.3 wd 1e-4,
    # per-step cosine without warmup.
    defaults={"optimizer": "lars", "nesterov": True, "lars_trust_coeff": 0.005, "lars_trust_clip": True,
              "exclude_bias_norm_wd": True, "learning_rate": 0.3, "weight_decay": 1e-4, "sgd_momentum": 0.9,
              "lr_schedule": "cosine", "warmup_steps": 0},
    paper=Paper("EMP-SSL", "EMP-SSL: Towards Self-Supervised Learning in One Training Epoch",
                "https://arxiv.org/abs/2304.03977", "https://github.com/tsb0601/EMP-SSL",
                "@article{tong2023empssl,\n  title={EMP-SSL: Towards Self-Supervised Learning in One Training "
                "Epoch},\n  author={Tong, Shengbang and Chen, Yubei and Ma, Yi and LeCun, Yann},\n  "
                "journal={arXiv preprint arXiv:2304.03977},\n  year={2023}\n}"),
    tiny={**_TINY_RESNET, "hidden_dim": 32, "z_dim": 16, "num_patches": 2, "eval_patches": 2},
))
