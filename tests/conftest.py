"""Shared fixtures: the real CIFAR-10 shards, tiny timm backbones and a small dataset with bad images."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may need the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = (REPO.parent / "shared" / "datasets" / "cifar10").resolve()


@pytest.fixture(scope="session")
def cifar10() -> str:
    if not (CIFAR10 / "data").is_dir():
        pytest.fail(f"the shared CIFAR-10 shards are missing at {CIFAR10}")
    return str(CIFAR10)


def tiny_run(output_dir: Path, dataset: str, *, method: str = "moco_v2", **overrides: Any) -> dict[str, Any]:
    """Arguments for a fast real run of ``method``: its registry defaults and tiny setting (a tiny timm backbone
    at 32 px), on a real CIFAR-10 stream."""
    from hf_mixssl.methods import get_method

    entry = get_method(method)
    values: dict[str, Any] = dict(
        method=method, dataset=dataset, per_device_batch_size=16, max_steps=4, output_dir=str(output_dir),
        checkpointing_steps=0, knn_every=-1, num_workers=0, report_to="none", logging_steps=1,
        learning_rate=0.05, seed=0, image_every=-1,
    )
    values.update(entry.defaults)
    values.update(entry.tiny)
    values.update(overrides)
    return values


def run_pretrain(values: dict[str, Any]) -> dict[str, Any]:
    from hf_mixssl.train.arguments import resolve
    from hf_mixssl.train.loop import pretrain

    return pretrain(resolve(values))


@pytest.fixture(scope="session")
def messy_dataset(tmp_path_factory, cifar10) -> str:
    """A parquet dataset of real CIFAR images mixed with corrupt, truncated, grayscale, CMYK, RGBA and 1x1 ones."""
    from datasets import Dataset, Features, Image, Value, load_dataset
    from PIL import Image as PILImage

    src = load_dataset(cifar10, split="test", streaming=True)
    good = []
    for row in src.take(40):
        buf = io.BytesIO()
        row["img"].save(buf, format="PNG")
        good.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": int(row["label"])})

    def encoded(img: PILImage.Image, fmt: str) -> dict:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return {"bytes": buf.getvalue(), "path": None}

    base = PILImage.new("RGB", (32, 32), (200, 30, 30))
    jpeg = encoded(base, "JPEG")["bytes"]
    bad = [
        {"image": {"bytes": b"this is not an image", "path": None}, "label": 1},             # corrupt
        {"image": {"bytes": jpeg[: len(jpeg) // 2], "path": None}, "label": 2},             # truncated
        {"image": encoded(base.convert("L"), "PNG"), "label": 3},                            # grayscale
        {"image": encoded(base.convert("CMYK"), "JPEG"), "label": 4},                        # CMYK
        {"image": encoded(PILImage.new("RGBA", (32, 32), (0, 0, 255, 128)), "PNG"), "label": 5},  # RGBA
        {"image": encoded(PILImage.new("RGB", (1, 1)), "PNG"), "label": 6},                  # 1x1
    ]
    rows = good[:20] + bad + good[20:]
    features = Features({"image": Image(), "label": Value("int64")})
    ds = Dataset.from_list(rows, features=features)
    out = tmp_path_factory.mktemp("messy") / "data"
    out.mkdir(parents=True)
    ds.to_parquet(str(out / "train-00000-of-00001.parquet"))
    ds.to_parquet(str(out / "test-00000-of-00001.parquet"))
    return str(out.parent)


def check_loads_without_hf_mixssl(model_dir: Path, auto_class: str, x, expected, *, features: bool) -> str:
    """Load ``model_dir`` with ``<auto_class>.from_pretrained(..., trust_remote_code=True)`` in a fresh process
    where ``import hf_mixssl`` fails, and check its eval-mode output on ``x`` (``extract_features`` when
    ``features``, else logits) equals ``expected``. Returns the loaded class's module."""
    import subprocess
    import sys
    import textwrap

    import torch

    torch.save({"x": x, "y": expected}, model_dir / "expected.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["hf_mixssl"] = None  # make `import hf_mixssl` fail: the code must travel with the weights
        import torch
        import transformers
        model = getattr(transformers, {auto_class!r}).from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        model.eval()
        expected = torch.load({str(model_dir / "expected.pt")!r})
        out = model.extract_features(expected["x"]) if {features!r} else model(expected["x"]).logits
        assert torch.allclose(out, expected["y"], atol=1e-5)
        print("OK", type(model).__module__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(model_dir / "modules")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=model_dir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().split()[-1]


def two_process_launch() -> list[str]:
    """``accelerate launch`` with two CPU ranks (run it with ``ACCELERATE_USE_CPU=true``): the CLI users type.

    (``accelerate.debug_launcher`` deadlocks inside pytest once the parent has used torch's thread pool.)
    """
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
