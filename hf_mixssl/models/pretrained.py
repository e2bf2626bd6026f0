"""The base of every hf_mixssl model: what all methods share as ``transformers.PreTrainedModel`` subclasses.

Only torch and transformers are imported, so the file travels with the weights (``trust_remote_code``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers import PreTrainedModel


def single_view(pixel_values: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` from ``[B, C, H, W]`` or the first view of ``[B, V, C, H, W]``; else ``ValueError``."""
    if pixel_values.ndim == 5:
        pixel_values = pixel_values[:, 0]
    if pixel_values.ndim != 4:
        raise ValueError(f"expected pixel_values [B, C, H, W] (or views [B, V, C, H, W]), got shape "
                         f"{tuple(pixel_values.shape)}")
    return pixel_values


def init_non_persistent(module: nn.Module) -> None:
    """The whole of our models' ``_init_weights``: rebuild a timm module's non-persistent buffers.

    timm initialises its layers in its constructor and our heads use PyTorch's default init (as the official
    code does); transformers' default ``_init_weights`` would overwrite both with N(0, 0.02). Only buffers that
    are not saved need rebuilding after ``from_pretrained`` constructs the model on the meta device.
    """
    if hasattr(module, "init_non_persistent_buffers"):
        module.init_non_persistent_buffers()


def record_auto_classes(config, model_cls: type, auto_classes: Iterable[str]) -> None:
    """Pre-register ``model_cls`` under several Auto classes in ``config.auto_map``.

    ``save_pretrained`` writes only the model's own ``_auto_class`` into ``auto_map``; entries already present
    are kept, so recording the others here lets ``trust_remote_code=True`` resolve every one of them.
    """
    module = model_cls.__module__.rsplit(".", 1)[-1]
    auto_map = dict(getattr(config, "auto_map", None) or {})
    for name in auto_classes:
        auto_map.setdefault(name, f"{module}.{model_cls.__name__}")
    config.auto_map = auto_map


class VisionPreTrainedModel(PreTrainedModel):
    """Image-input base: keeps timm's init, keeps frozen parameters frozen through ``from_pretrained``, and
    defines the hooks the training loop calls on every method (a method overrides the ones it needs).

    transformers 5 re-wraps every loaded tensor as ``nn.Parameter(requires_grad=True)``, which would un-freeze
    momentum encoders and MAE's fixed position embeddings in a loaded model (and let an optimizer train them
    when it is fine-tuned). The names frozen at construction are recorded and re-frozen after loading.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Methods whose parts learn from different losses (AutoMix) ask DDP to tolerate unused parameters.
    ddp_find_unused_parameters = False

    # ------------------------------------------------------------------ hooks of the training loop (defaults)
    def update_momentum(self, progress: float) -> float | None:
        """Move momentum parts after a real optimizer step at training ``progress`` in [0, 1]; returns the
        coefficient used, or ``None`` for a method without momentum parts."""
        return None

    def optimizer_param_groups(self) -> nn.Module | list[dict]:
        """What the optimizer trains: the whole model (timm groups it for weight decay and ``no_weight_decay()``),
        or a method's own parameter groups (an optional ``lr_scale`` per group)."""
        return self

    def pictures(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{name: [3, H, W] grid in [0, 1]}`` showing what the method does to these images (none by default)."""
        return {}

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start the backbone from a timm state dict (``--backbone_pretrained``), strictly; by default into the
        module :meth:`get_encoder` returns (methods whose encoder is a copy, or that keep a momentum copy,
        override this)."""
        self.get_encoder().load_state_dict(state, strict=True)

    def returns_features(self, pixel_values: torch.Tensor, return_loss: bool | None) -> bool:
        """Whether a self-supervised ``forward`` is inference on plain images ``[B, C, H, W]`` and returns the pooled
        features (``pipeline("image-feature-extraction")``): ``return_loss=False``, or by default in eval mode.
        Training (train mode, or ``return_loss=True``) computes the losses as before."""
        if return_loss is None:
            return_loss = self.training
        return not return_loss and pixel_values.ndim == 4

    def extra_classifiers(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Logits functions evaluated beside the model's own top-1, keyed by metric name (AutoMix's online
        encoder); none by default."""
        return {}

    def _init_weights(self, module: nn.Module) -> None:
        init_non_persistent(module)

    def post_init(self) -> None:
        super().post_init()
        self._frozen_parameters = [n for n, p in self.named_parameters() if not p.requires_grad]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        frozen = set(getattr(model, "_frozen_parameters", ()))
        for name, param in model.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
        return loaded
