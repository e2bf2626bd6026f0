"""The GPU check (`scripts/gpu_check.sh`): is the GPU fed, and does a short real run learn?

Rows, each as images/s with peak GPU memory: a step on synthetic tensors already on the GPU (the model's limit),
then the same step fed by our pipeline (synthetic ImageNet-like JPEGs it makes, decoded and augmented by the data
workers) with the colour ops on the device and on the CPU; for MoCo v2 ResNet-50 224 px, MAE ViT-B/16 224 px and
MoCo v2 CIFAR (ResNet-18 CIFAR stem, batch 512, 32 px). Steps run in bf16 autocast with channels-last inputs.
Then the device view ops alone, eager and compiled, in ms per image and as a fraction of the R-50 step.
Then a MoCo v2 CIFAR run of the ``moco_v2_cifar`` preset for about ``--knn_minutes`` on the real CIFAR-10 and its
kNN top-1. ``--smoke`` runs every row with tiny models, batches and step counts on any device (the test suite
runs it on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .benchmark import PeakMemory, synthetic_imagenet, time_steps


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(method: str, settings: dict, device: torch.device):
    """A model of ``method`` with the method's registry defaults plus ``settings``, and its SGD optimizer."""
    from hf_mixssl.methods import get_method
    from hf_mixssl.train.arguments import settings_of

    entry = get_method(method)
    config = entry.make_config(**settings_of(entry, {**entry.defaults, **settings}))
    model = entry.model_class(config).to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    groups = model.optimizer_param_groups()
    if isinstance(groups, torch.nn.Module):
        groups = [{"params": [p for p in groups.parameters() if p.requires_grad]}]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    return model, opt


def rate(model, opt, batches, *, steps: int, warmup: int, batch_size: int, device: torch.device) -> dict:
    """images/s of optimizer steps on ``batches`` (an iterator of device batches) and the peak memory (MiB)."""
    from hf_mixssl.train.device import to_channels_last

    def step() -> None:
        batch = next(batches)
        x = batch["pixel_values"]
        if device.type == "cuda":
            x = to_channels_last(x)
        with _autocast(device):
            loss = model(pixel_values=x, labels=batch.get("labels")).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_momentum(0.5)

    with PeakMemory(device) as mem:
        for _ in range(warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
    return {"images_per_sec": steps * batch_size / seconds, "peak_mib": mem.peak_mib}


def synthetic_batches(shape: tuple[int, ...], device: torch.device, num_labels: int = 10):
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, num_labels, (shape[0],), device=device)
    while True:
        yield {"pixel_values": x, "labels": y}


def pipeline_batches(dataset: str, recipe: str, *, size: int, mean, std, batch_size: int, workers: int,
                     on_device: bool, device: torch.device):
    from hf_mixssl.data.device_views import device_view_transform
    from hf_mixssl.data.stream import ImageStream
    from hf_mixssl.data.views import view_transform

    views = (device_view_transform if on_device else view_transform)(recipe, size=size, mean=mean, std=std)
    stream = ImageStream(dataset, "train", views, batch_size, seed=0, num_workers=workers, buffer_size=1000)
    return stream.on_device(device)


def check_rows(args, device: torch.device) -> list[dict]:
    from hf_mixssl.models.config_fields import IMAGENET_MEAN, IMAGENET_STD

    smoke = args.smoke
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="hf_mixssl_gpu_check_"))
    images = synthetic_imagenet(data_dir / "imagenet_like", images=64 if smoke else args.images)
    cifar_mean, cifar_std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    cases = [  # (name, method, settings, view recipe, image size, batch, dataset, mean, std)
        ("MoCo v2 ResNet-50 224 px", "moco_v2",
         {"backbone": "test_resnet" if smoke else "resnet50", "queue_size": 256 if smoke else 65536},
         "moco_v2", 64 if smoke else 224, 8 if smoke else args.batch_size, str(images), IMAGENET_MEAN, IMAGENET_STD),
        ("MAE ViT-B/16 224 px", "mae",
         {"backbone": "vit_tiny_patch16_224" if smoke else "vit_base_patch16_224",
          "backbone_kwargs": {"depth": 1} if smoke else {}, "decoder_depth": 1 if smoke else 8,
          "decoder_embed_dim": 64 if smoke else 512},
         "mae", 64 if smoke else 224, 8 if smoke else args.batch_size, str(images), IMAGENET_MEAN, IMAGENET_STD),
        ("MoCo v2 CIFAR ResNet-18 CIFAR stem, B 512", "moco_v2",
         {"backbone": "test_resnet" if smoke else "resnet18", "cifar_stem": True, "queue_size": 4096,
          "proj_num_layers": 1, "bn_splits": 8, "tau": 0.1, "momentum": 0.99},
         "moco_cifar", 32, 16 if smoke else 512, args.cifar, cifar_mean, cifar_std),
    ]
    steps, warmup = (2, 1) if smoke else (args.steps, args.warmup)
    rows = []
    for name, method, settings, recipe, size, batch, dataset, mean, std in cases:
        settings = {**settings, "image_size": size, "image_mean": list(mean), "image_std": list(std)}
        views = 2 if method == "moco_v2" else 1
        shape = (batch, views, 3, size, size) if views > 1 else (batch, 3, size, size)
        feeds = [("synthetic tensors on the device (limit)", lambda: synthetic_batches(shape, device))]
        for on_device in (True, False):
            where = "device" if on_device else "CPU workers"
            feeds.append((f"our pipeline, colour ops on the {where}", lambda on_device=on_device: pipeline_batches(
                dataset, recipe, size=size, mean=mean, std=std, batch_size=batch, workers=args.workers,
                on_device=on_device, device=device)))
        limit = None
        for feed, make in feeds:
            torch.manual_seed(0)
            model, opt = build(method, settings, device)
            batches = make()
            try:
                r = rate(model, opt, batches, steps=steps, warmup=warmup, batch_size=batch, device=device)
            finally:
                close = getattr(batches, "close", None)
                if close:
                    close()
            limit = limit or r["images_per_sec"]
            row = {"case": name, "feed": feed, **r, "vs_limit": r["images_per_sec"] / limit}
            rows.append(row)
            print(f"| {name} | {feed} | {row['images_per_sec']:.0f} | {row['vs_limit']:.2f} | {row['peak_mib']:.0f} |",
                  flush=True)
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def view_ops_rows(args, device: torch.device, step_rate: float) -> list[dict]:
    """ms per image of the device view ops alone (``DeviceViews.finish``: two MoCo v2 views at 224 px from uint8
    crops, at the 224 px batch), eager and compiled (``--torch_compile``; not with ``--smoke``), and that time as a
    fraction of a MoCo v2 ResNet-50 step per image (``step_rate``: its limit row)."""
    from hf_mixssl.data.device_views import device_view_transform

    size, batch, reps = (64, 8, 2) if args.smoke else (224, args.batch_size, 10)
    rows = []
    for compile in (False,) if args.smoke else (False, True):
        views = device_view_transform("moco_v2", size=size, compile=compile)
        torch.manual_seed(0)
        crops = torch.randint(0, 256, (batch, 2, size, size, 3), dtype=torch.uint8).to(device)
        params = torch.stack([torch.stack([ops.draw() for ops in views.ops]) for _ in range(batch)]).to(device)
        seconds = time_steps(lambda: views.finish(crops, params), steps=reps, warmup=3, device=device)  # + compiling
        ms = seconds / batch * 1e3
        row = {"row": f"MoCo v2 device view ops, {'compiled' if compile else 'eager'}", "ms_per_image": ms,
               "vs_step": ms * step_rate / 1e3}
        rows.append(row)
        print(f"| {row['row']} | {ms:.3f} | {row['vs_step']:.3f} |", flush=True)
    return rows


def knn_run(args, cifar_rate: float, device: torch.device) -> dict:
    """The ``moco_v2_cifar`` preset for about ``--knn_minutes`` (steps from the measured rate) and its kNN."""
    from hf_mixssl.train.arguments import parse_args
    from hf_mixssl.train.loop import pretrain

    batch = 16 if args.smoke else 512
    steps = 2 if args.smoke else max(10, int(args.knn_minutes * 60 * cifar_rate / batch))
    out = Path(tempfile.mkdtemp(prefix="hf_mixssl_gpu_check_run_"))
    argv = ["--preset", "moco_v2_cifar", "--dataset", args.cifar, "--max_steps", str(steps), "--output_dir",
            str(out), "--report_to", "none", "--checkpointing_steps", "0", "--num_workers", str(args.workers),
            "--image_every", "-1", "--per_device_batch_size", str(batch), "--no-export_encoder",
            "--augment_on", "auto"]
    if args.smoke:
        argv += ["--backbone", "test_resnet", "--queue_size", "64", "--knn_train_samples", "64",
                 "--knn_test_samples", "32", "--bn_group_size", "8"]
    if device.type == "cuda":
        argv += ["--channels_last"]
    start = time.perf_counter()
    result = pretrain(parse_args(argv))
    return {"steps": steps, "epochs": steps * batch / 50000, "seconds": time.perf_counter() - start,
            "knn_top1": result.get("knn_top1"), "run_dir": str(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models and step counts (any device; for the tests)")
    p.add_argument("--cifar", default="../shared/datasets/cifar10", help="CIFAR-10 for the CIFAR rows and the run")
    p.add_argument("--data_dir", default=None, help="where the synthetic ImageNet-like JPEGs go (default: a temp dir)")
    p.add_argument("--images", type=int, default=2048, help="synthetic JPEGs (500x375)")
    p.add_argument("--batch_size", type=int, default=128, help="batch of the 224 px rows")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row")
    default_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=default_workers, help="data workers")
    p.add_argument("--knn_minutes", type=float, default=2.0, help="length of the MoCo CIFAR run")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.smoke:
        args.workers = min(args.workers, 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, {args.workers} data workers, bf16 autocast + channels_last "
          f"{'on' if device.type == 'cuda' else 'off (CPU)'}\n", flush=True)
    print("| case | feed | images/s | vs limit | peak memory (MiB) |\n|---|---|---|---|---|", flush=True)
    report: dict = {"device": name, "torch": torch.__version__, "workers": args.workers}
    report["rows"] = rows = check_rows(args, device)
    print("\n| view ops (batch of two 224 px views) | ms per image | of a MoCo v2 R-50 step |\n|---|---|---|",
          flush=True)
    report["view_ops"] = view_ops_rows(args, device, rows[0]["images_per_sec"])
    cifar = [r for r in rows if r["case"].startswith("MoCo v2 CIFAR") and "device" in r["feed"]][0]
    if device.type == "cuda":
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")
    report["knn_run"] = run = knn_run(args, cifar["images_per_sec"], device)
    print(f"\nMoCo v2 CIFAR run: {run['steps']} steps ({run['epochs']:.1f} epochs) in {run['seconds']:.0f} s, "
          f"kNN top-1 {run['knn_top1']}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
