"""The image processor saved with every run (``preprocessor_config.json``): the run's evaluation transform as a
stock transformers ``BitImageProcessor``, so ``AutoImageProcessor`` and ``pipeline(...)`` work on a run dir or Hub
repo without hf_mixssl.

It reproduces :func:`hf_mixssl.data.views.eval_transform`: at 64 px and below a bilinear resize to the square size;
above, a bilinear resize of the shorter side to ``size * 256 / 224`` and a center crop; then ``/255`` and the run's
mean and std. (PIL bilinear resampling in both; the transform's antialiased tensor resize of a PIL image is PIL's.)
"""

from __future__ import annotations

from typing import Any


def image_processor_for(config: Any):
    """A ``BitImageProcessor`` matching the evaluation transform of a model config (``image_size``, mean, std)."""
    from PIL import Image
    from transformers import BitImageProcessor

    size = int(config.image_size)
    common = dict(do_resize=True, resample=Image.BILINEAR, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, image_mean=list(config.image_mean), image_std=list(config.image_std),
                  do_convert_rgb=True)
    if size <= 64:
        return BitImageProcessor(size={"height": size, "width": size}, do_center_crop=False, **common)
    return BitImageProcessor(size={"shortest_edge": int(round(size * 256 / 224))}, do_center_crop=True,
                             crop_size={"height": size, "width": size}, **common)
