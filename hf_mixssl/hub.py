"""Sharing: what a saved model directory needs so that others can load it.

(Model-card rendering, encoder export and Hub upload are planned here too; see the open sharing issue.)
"""

from __future__ import annotations

from collections.abc import Iterable


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
