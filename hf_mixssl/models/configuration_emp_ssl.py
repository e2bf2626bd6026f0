"""Configuration of EMP-SSL (Tong, Chen, Ma, LeCun 2023: "EMP-SSL: Towards Self-Supervised Learning in One
Training Epoch")."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .config_fields import set_backbone_fields

EVAL_FEATURES = ("pre_feature", "backbone")


class EMPSSLConfig(PretrainedConfig):
    r"""Configuration of :class:`EMPSSLModel`.

    Args:
        backbone (`str`, defaults to `"resnet18"`): the timm encoder (the paper: ResNet-18 with the CIFAR stem).
        backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` arguments.
        cifar_stem (`bool`, defaults to `True`): 3x3 stride-1 ResNet stem without max-pool.
        image_size (`int`, defaults to 32): patch resolution (patches are resized to it).
        image_mean (`list[float]`, defaults to 0.5 per channel, the official normalisation): inputs are
            normalised images, like every model's; the patch generator works on the de-normalised [0, 1] images
            and normalises each patch the same way, so the encoder always sees this normalisation.
        image_std (`list[float]`, defaults to 0.5 per channel): the std of that normalisation.
        hidden_dim (`int`, defaults to 4096): width of the pre-feature and the projector's hidden layer:
            ``backbone -> Linear(hidden) BN ReLU`` (the "pre-feature") ``-> Linear(hidden) BN ReLU -> Linear(z_dim)
            -> L2 norm``.
        z_dim (`int`, defaults to 1024): embedding dimension (the projector's output).
        num_patches (`int`, defaults to 20): augmented patches per image per step.
        crop_scale (`float`, defaults to 0.25): patch area as a fraction of the image.
        tcr_eps (`float`, defaults to 0.2): the coding-rate precision ``eps``.
        invariance_weight (`float`, defaults to 200.0): weight of the invariance term.
        tcr_weight (`float`, defaults to 1.0): weight of the TCR term.
        eval_patches (`int`, defaults to 128): bag-of-features size of :meth:`EMPSSLModel.extract_features`
            (features averaged over this many augmented patches; 0 = the whole image once).
        eval_features (`str`, defaults to `"pre_feature"`): ``"pre_feature"`` (the ``hidden_dim`` features after
            the first projector layer, the paper's) or ``"backbone"``.
    """

    model_type = "hf_mixssl_emp_ssl"

    def __init__(
        self,
        *,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        cifar_stem: bool = True,
        image_size: int = 32,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        hidden_dim: int = 4096,
        z_dim: int = 1024,
        num_patches: int = 20,
        crop_scale: float = 0.25,
        tcr_eps: float = 0.2,
        invariance_weight: float = 200.0,
        tcr_weight: float = 1.0,
        eval_patches: int = 128,
        eval_features: str = "pre_feature",
        **kwargs: Any,
    ) -> None:
        for name, value in (("hidden_dim", hidden_dim), ("z_dim", z_dim), ("num_patches", num_patches)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_patches < 2:
            raise ValueError(f"num_patches must be >= 2 (the invariance term compares patches), got {num_patches}")
        if not isinstance(eval_patches, int) or eval_patches < 0:
            raise ValueError(f"eval_patches must be an integer >= 0, got {eval_patches!r}")
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale!r}")
        if not tcr_eps > 0:
            raise ValueError(f"tcr_eps must be > 0, got {tcr_eps!r}")
        if invariance_weight < 0 or tcr_weight < 0:
            raise ValueError(f"invariance_weight and tcr_weight must be >= 0, got {invariance_weight}, {tcr_weight}")
        if eval_features not in EVAL_FEATURES:
            raise ValueError(f"eval_features must be one of {EVAL_FEATURES}, got {eval_features!r}")
        set_backbone_fields(self, backbone=backbone, backbone_kwargs=backbone_kwargs, cifar_stem=cifar_stem,
                            image_size=image_size, image_mean=image_mean or [0.5, 0.5, 0.5],
                            image_std=image_std or [0.5, 0.5, 0.5])
        self.hidden_dim = hidden_dim
        self.z_dim = z_dim
        self.num_patches = num_patches
        self.crop_scale = float(crop_scale)
        self.tcr_eps = float(tcr_eps)
        self.invariance_weight = float(invariance_weight)
        self.tcr_weight = float(tcr_weight)
        self.eval_patches = eval_patches
        self.eval_features = eval_features
        super().__init__(**kwargs)
