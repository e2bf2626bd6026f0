#!/usr/bin/env python
"""Throughput benchmark: `python scripts/benchmark.py [--backbone resnet18 --image_size 32 --batch_size 128]`.

Rows (images/s, on whatever device is present):
- the practical limit: a bare timm supervised train step (one forward + backward + SGD step);
- our MoCo v2 and v3 train steps (forward, backward, step, momentum update), with the efficiency ratio
  ``ips * work / limit``, where MoCo v2 does 4/3 of a supervised step's work (one extra no-grad
  forward of the key encoder) and symmetric v3 8/3;
- the same MoCo v2 step built from lightly's components (the peer; needs `pip install lightly`);
- the data pipeline (stream, decode, two views) with 0, 1 and 2 worker processes.
Peak memory is the largest resident set (CPU) or allocated memory (CUDA) seen during each row.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


class PeakMemory:
    """Peak RSS (CPU, sampled every 5 ms) or peak allocated CUDA memory during a block, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib = device, 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        proc, self._stop = psutil.Process(), threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                self.peak_mib = max(self.peak_mib, rss / 2**20)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def time_steps(step: Callable[[], None], *, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls (device-synchronised)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def supervised_step(args, device):
    import timm

    model = timm.create_model(args.backbone, num_classes=10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        with autocast(device, args.bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def moco_step(args, device, version: int):
    from hf_mixssl import MoCoConfig, MoCoModel

    kw = dict(proj_hidden_dim=0, proj_dim=128, queue_size=4096, tau=0.1) if version < 3 else \
        dict(proj_hidden_dim=4096, proj_dim=256, pred_hidden_dim=4096, tau=1.0, momentum_schedule="cosine")
    cfg = MoCoConfig(version=version, backbone=args.backbone, image_size=args.image_size,
                     proj_num_layers=2, momentum=0.99, **kw)
    model = MoCoModel(cfg).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 2, 3, args.image_size, args.image_size, device=device)

    def step() -> None:
        with autocast(device, args.bf16):
            loss = model(pixel_values=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_momentum(0.5)

    return step


def lightly_moco_step(args, device):
    """MoCo v2 from lightly's components (its documented example), on the same timm backbone."""
    import timm
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    backbone = timm.create_model(args.backbone, num_classes=0)
    dim = backbone.num_features
    head = MoCoProjectionHead(dim, dim, 128)
    backbone_m, head_m = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(head_m)
    modules = torch.nn.ModuleList([backbone, head, backbone_m, head_m]).to(device).train()
    criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 2, 3, args.image_size, args.image_size, device=device)
    del modules

    def step() -> None:
        update_momentum(backbone, backbone_m, m=0.99)
        update_momentum(head, head_m, m=0.99)
        with autocast(device, args.bf16):
            query = head(backbone(x[:, 0]))
            with torch.no_grad():
                key = head_m(backbone_m(x[:, 1])).detach()
            loss = criterion(query, key)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def data_pipeline(args, workers: int) -> tuple[float, float]:
    from hf_mixssl.data import ImageStream
    from hf_mixssl.transforms import CIFAR10_MEAN, CIFAR10_STD, view_transform

    tf = view_transform("moco_cifar", size=args.image_size, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    stream = ImageStream(args.dataset, "train", tf, args.batch_size, seed=0, num_workers=workers)
    it = iter(stream)
    with PeakMemory(torch.device("cpu")) as mem:
        next(it)  # pool start-up and shuffle-buffer fill are not throughput
        start = time.perf_counter()
        for _ in range(args.data_batches):
            next(it)
        seconds = time.perf_counter() - start
    it.close()
    return args.data_batches * args.batch_size / seconds, mem.peak_mib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the model steps")
    p.add_argument("--dataset", default="../shared/datasets/cifar10")
    p.add_argument("--data_batches", type=int, default=20)
    p.add_argument("--skip", nargs="*", default=[], choices=["lightly", "data", "v3"])
    p.add_argument("--output", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    rows: list[dict] = []

    def model_row(name: str, build: Callable, work: float | None) -> None:
        with PeakMemory(device) as mem:
            seconds = time_steps(build(), steps=args.steps, warmup=args.warmup, device=device)
        ips = args.batch_size / seconds
        rows.append({"row": name, "images_per_sec": ips, "work": work, "peak_mib": mem.peak_mib})

    model_row("timm supervised step (limit)", lambda: supervised_step(args, device), 1.0)
    model_row("hf_mixssl MoCo v2 step", lambda: moco_step(args, device, 2), 4 / 3)
    if "v3" not in args.skip:
        model_row("hf_mixssl MoCo v3 step (symmetric)", lambda: moco_step(args, device, 3), 8 / 3)
    if "lightly" not in args.skip:
        try:
            model_row("lightly MoCo v2 step (peer)", lambda: lightly_moco_step(args, device), 4 / 3)
        except ImportError:
            print("lightly is not installed (pip install -e '.[bench]'): skipping the peer row", file=sys.stderr)
    limit = rows[0]["images_per_sec"]
    for row in rows:
        row["efficiency"] = row["images_per_sec"] * row["work"] / limit
    if "data" not in args.skip:
        for workers in (0, 1, 2):
            ips, mib = data_pipeline(args, workers)
            rows.append({"row": f"data pipeline, {workers} workers", "images_per_sec": ips, "work": None,
                         "efficiency": None, "peak_mib": mib})

    title = (f"{args.backbone}, {args.image_size} px, batch {args.batch_size}, {device.type}"
             f"{' bf16 autocast' if args.bf16 else ' fp32'}, torch {torch.__version__}")
    print(f"\n{title}\n")
    print("| row | images/s | efficiency vs limit | peak memory (MiB) |")
    print("|---|---|---|---|")
    for r in rows:
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else ""
        print(f"| {r['row']} | {r['images_per_sec']:.0f} | {eff} | {r['peak_mib']:.0f} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"setting": title, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
