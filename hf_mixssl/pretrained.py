"""The base of every hf_mixssl model: what all methods share as ``transformers.PreTrainedModel`` subclasses.

Only torch and transformers are imported, so the file travels with the weights (``trust_remote_code``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from transformers import PreTrainedModel


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
    """Image-input base: keeps timm's init, and keeps frozen parameters frozen through ``from_pretrained``.

    transformers 5 re-wraps every loaded tensor as ``nn.Parameter(requires_grad=True)``, which would un-freeze
    momentum encoders and MAE's fixed position embeddings in a loaded model (and let an optimizer train them
    when it is fine-tuned). The names frozen at construction are recorded and re-frozen after loading.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

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
