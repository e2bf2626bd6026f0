"""Writing the models' pictures: PNG files under ``<output_dir>/images/`` and image-capable trackers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image


def save_pictures(pictures: dict[str, torch.Tensor], out_dir: Path, step: int, trackers: Sequence = ()) -> list[Path]:
    """Write each ``[3, H, W]`` grid as ``<out_dir>/step_<N>_<name>.png`` and log it to image-capable trackers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, grid in pictures.items():
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        path = out_dir / f"step_{step:08d}_{name}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
        for tracker in trackers:
            if hasattr(tracker, "log_images"):
                try:
                    tracker.log_images({name: grid[None].numpy()}, step=step)
                except Exception:  # noqa: BLE001 - a tracker's image API must never stop training
                    pass
    return paths
