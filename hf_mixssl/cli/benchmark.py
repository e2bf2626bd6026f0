"""Throughput benchmark: `python scripts/benchmark.py [--suite moco|mixing|automix|mae|emp_ssl|all] [--backbone resnet18 ...]`.

Rows (images/s, on whatever device is present):
- the practical limit: a bare timm supervised train step (one forward + backward + SGD step);
- our MoCo v2 and v3 train steps (forward, backward, step, momentum update), with the efficiency ratio
  ``ips * work / limit``, where MoCo v2 does 4/3 of a supervised step's work (one extra no-grad
  forward of the key encoder) and symmetric v3 8/3;
- the same MoCo v2 step built from lightly's components (the peer; needs `pip install lightly`);
- the data pipeline (stream, decode, two views) with 0, 1 and 2 worker processes.
Suite `mixing`: calls/s of every mixer on a `--mix_batch` x 3 x `--mix_size`^2 batch against timm's
Mixup / CutMix (`timm.data.Mixup`) on the same batch. Suite `automix`: an AutoMix train step against a plain
Mixup classifier step on the same backbone (OpenMixup's AutoMix costs 2.2x Mixup on DeiT-S).
Suite `mae`: our MAE train step against transformers' `ViTMAEForPreTraining` of the same size (the peer) and a
bare timm ViT train step on all patches (`--mae_backbone`, `--mae_patch`, `--mae_decoder` width depth heads).
Suite `emp_ssl`: patches/s of our batched multi-patch generator against the official per-patch torchvision/PIL
pipeline (`dataset/aug.py`) on the same CIFAR images, and an EMP-SSL train step (`--emp_patches` patches of
`--emp_images` images, `--backbone`, CIFAR stem) against the bare timm supervised step on as many images.
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
from pathlib import Path

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


def train_step(loss_fn: Callable[[], torch.Tensor], opt, *, device, bf16: bool, after: Callable | None = None):
    """A closure running one optimizer step on ``loss_fn()`` under autocast, then ``after()`` (momentum updates)."""

    def step() -> None:
        with autocast(device, bf16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after()

    return step


def supervised_step(args, device):
    import timm

    model = timm.create_model(args.backbone, num_classes=10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    return train_step(lambda: F.cross_entropy(model(x), y), opt, device=device, bf16=args.bf16)


def moco_step(args, device, version: int):
    from hf_mixssl import MoCoConfig, MoCoModel

    kw = dict(proj_hidden_dim=0, proj_dim=128, queue_size=4096, tau=0.1) if version < 3 else \
        dict(proj_hidden_dim=4096, proj_dim=256, pred_hidden_dim=4096, tau=1.0, momentum_schedule="cosine")
    cfg = MoCoConfig(version=version, backbone=args.backbone, image_size=args.image_size,
                     proj_num_layers=2, momentum=0.99, **kw)
    model = MoCoModel(cfg).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 2, 3, args.image_size, args.image_size, device=device)

    return train_step(lambda: model(pixel_values=x).loss, opt, device=device, bf16=args.bf16,
                      after=lambda: model.update_momentum(0.5))


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
    from hf_mixssl.data.stream import ImageStream
    from hf_mixssl.data.views import CIFAR10_MEAN, CIFAR10_STD, view_transform

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


def synthetic_imagenet(root: Path, *, images: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """A parquet dataset of ``images`` ImageNet-like JPEGs (500x375, quality 90, smooth colour fields with
    texture and edges, ~40-90 KB each) with labels, in the Hub layout (``data/train-*.parquet``)."""
    import io

    import numpy as np
    from datasets import Dataset, Features, Image as ImageFeature, Value
    from PIL import Image, ImageDraw, ImageFilter

    out = root / "data" / "train-00000-of-00001.parquet"
    if out.is_file():
        return root
    rng = np.random.default_rng(seed)
    rows = []
    w, h = size
    for i in range(images):
        low = rng.uniform(0, 255, (h // 25 + 1, w // 25 + 1, 3)).astype("uint8")
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        noise = Image.fromarray(rng.normal(0, 18, (h, w, 3)).clip(-128, 127).astype("int8").view("uint8"))
        img = Image.blend(img, noise, 0.15).filter(ImageFilter.SMOOTH)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150)))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": i % 10})
    out.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=Features({"image": ImageFeature(), "label": Value("int64")})).to_parquet(str(out))
    return root


def official_moco_loader(path: Path, *, batch_size: int, workers: int, size: int):
    """The official ``main_moco.py --aug-plus`` input pipeline: a map-style DataLoader over decoded JPEGs with
    torchvision v1 PIL transforms (``TwoCropsTransform``; ``loader.GaussianBlur`` is PIL's filter)."""
    import io
    import random

    import pyarrow.parquet as pq
    from PIL import Image, ImageFilter
    from torchvision import transforms

    class GaussianBlur:  # moco/loader.py
        def __init__(self, sigma=(0.1, 2.0)):
            self.sigma = sigma

        def __call__(self, x):
            return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.sigma[0], self.sigma[1])))

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    augmentation = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])
    table = pq.read_table(next((path / "data").glob("*.parquet")))
    blobs = [cell["bytes"] for cell in table.column("image").to_pylist()]
    labels = table.column("label").to_pylist()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(blobs)

        def __getitem__(self, i):
            img = Image.open(io.BytesIO(blobs[i])).convert("RGB")
            return [augmentation(img), augmentation(img)], labels[i]

    return torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=False)


def per_image_costs(args) -> list[dict]:
    """ms per image (two MoCo v2 views at 224 px, one process, one thread): the official worker's whole job,
    our device-split worker's job (decode + crop + parameter draws), PIL's colour ops on cropped views, and the
    same ops batched by ``DeviceViews.finish`` on this machine's device."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image
    from torchvision.transforms import v2

    from hf_mixssl.data.device_views import device_view_transform
    from hf_mixssl.data.stream import _Chunk, process_chunk
    from hf_mixssl.data.views import PILGaussianBlur

    path = synthetic_imagenet(Path(args.data_dir), images=args.data_images)
    table = pq.read_table(next((path / "data").glob("*.parquet")))
    blobs = [cell["bytes"] for cell in table.column("image").to_pylist()][:64]
    n = len(blobs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        official = official_moco_loader(path, batch_size=32, workers=0, size=224).dataset
        start = time.perf_counter()
        for i in range(n):
            official[i]
        official_ms = (time.perf_counter() - start) / n * 1e3
        split = device_view_transform("moco_v2", size=224)
        chunk = _Chunk(epoch=0, indices=list(range(n)), images=[{"bytes": b, "path": None} for b in blobs],
                       labels=[0] * n)
        start = time.perf_counter()
        _, (crops, params), _, _, _ = process_chunk(chunk, split, 0, 0, 4)
        worker_ms = (time.perf_counter() - start) / n * 1e3
        colour = v2.Compose([v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(0.2),
                             PILGaussianBlur(0.5), v2.RandomHorizontalFlip(), v2.ToImage()])
        cropped = [v2.RandomResizedCrop(224, scale=(0.2, 1.0))(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
        start = time.perf_counter()
        for img in cropped:
            colour(img), colour(img)
        pil_ms = (time.perf_counter() - start) / n * 1e3
    finally:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    crops, params = crops.to(device), params.to(device)

    def finish_ms(compile: bool) -> float:
        views = device_view_transform("moco_v2", size=224, compile=compile)
        # warm-up: compiling (compiled kernels) and the allocator's heap reaching its size
        return time_steps(lambda: views.finish(crops, params), steps=5, warmup=3, device=device) / n * 1e3

    eager_ms, compiled_ms = finish_ms(False), finish_ms(True)
    return [
        {"row": "official worker: decode + two full PIL views (1 thread)", "ms_per_image": official_ms},
        {"row": "device-split worker: decode + two crops + parameters (1 thread)", "ms_per_image": worker_ms,
         "vs_official": worker_ms / official_ms},
        {"row": "PIL colour ops of two views (jitter, gray, blur, flip; 1 thread)", "ms_per_image": pil_ms},
        {"row": f"the same ops batched by DeviceViews.finish on {device.type} ({torch.get_num_threads()} threads), eager",
         "ms_per_image": eager_ms, "speedup_vs_pil": pil_ms / eager_ms},
        {"row": "the same, compiled kernels (--torch_compile)", "ms_per_image": compiled_ms,
         "speedup_vs_pil": pil_ms / compiled_ms},
    ]


def data_rows(args) -> list[dict]:
    """images/s of two 224 px MoCo v2 views per image: the official DataLoader + PIL pipeline against ours
    (stream -> decode -> uint8 views in workers -> normalised on the device, here the CPU), 0/1/2 workers."""
    import tempfile

    from hf_mixssl.data.device_views import device_view_transform
    from hf_mixssl.data.stream import ImageStream
    from hf_mixssl.data.views import view_transform

    args.data_dir = args.data_dir or tempfile.mkdtemp(prefix="hf_mixssl_bench_")
    root = Path(args.data_dir)
    path = synthetic_imagenet(root, images=args.data_images)
    n_batches = args.data_images // args.data_batch_size - 1  # the first batch (start-up) is not timed
    rows = []

    def timed(batches) -> float:
        it = iter(batches)
        next(it)
        start = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        seconds = time.perf_counter() - start
        close = getattr(it, "close", None)
        if close:
            close()
        return n_batches * args.data_batch_size / seconds

    for workers in args.data_workers:
        loader = official_moco_loader(path, batch_size=args.data_batch_size, workers=workers, size=224)
        rows.append({"row": f"official main_moco.py DataLoader + PIL, {workers} workers", "workers": workers,
                     "images_per_sec": timed(loader)})
    views = view_transform("moco_v2", size=224)
    for workers in args.data_workers:
        stream = ImageStream(str(path), "train", views, args.data_batch_size, seed=0, num_workers=workers,
                             buffer_size=args.data_images)
        rows.append({"row": f"hf_mixssl ImageStream moco_v2 views, {workers} workers", "workers": workers,
                     "images_per_sec": timed(stream.on_device("cpu"))})
    device_views = device_view_transform("moco_v2", size=224)
    for workers in args.data_workers:
        stream = ImageStream(str(path), "train", device_views, args.data_batch_size, seed=0, num_workers=workers,
                             buffer_size=args.data_images)
        rows.append({"row": f"hf_mixssl ImageStream, device split (workers decode + crop), {workers} workers",
                     "workers": workers, "images_per_sec": timed(stream)})
    for r in rows:
        same = [o for o in rows if o["row"].split(",")[0] == r["row"].split(",")[0]]
        one = next((o for o in same if o["workers"] == 1), None)
        r["per_worker"] = r["images_per_sec"] / max(r["workers"], 1)
        r["scaling_vs_1_worker"] = r["images_per_sec"] / one["images_per_sec"] if one else None
    return rows


def mixing_rows(args, device) -> list[dict]:
    """calls/s of each mixer vs timm's Mixup/CutMix on the same batch."""
    from timm.data import Mixup

    from hf_mixssl.models import mixing

    x = torch.randn(args.mix_batch, 3, args.mix_size, args.mix_size, device=device)
    y = torch.randint(0, 1000, (args.mix_batch,), device=device)
    perm = torch.randperm(args.mix_batch, device=device)
    # timm mixes in place, so each call gets a fresh copy of the batch (ours return a new tensor too).
    timm_mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=1000)
    timm_cutmix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=1000)
    cases = {
        "timm Mixup (peer)": lambda: timm_mixup(x.clone(), y),
        "timm CutMix (peer)": lambda: timm_cutmix(x.clone(), y),
        "hf_mixssl mixup": lambda: mixing.mixup(x, y, lam=0.3, perm=perm),
        "hf_mixssl cutmix": lambda: mixing.cutmix(x, y, lam=0.3, perm=perm),
        "hf_mixssl fmix": lambda: mixing.fmix(x, y, lam=0.3, perm=perm),
        "hf_mixssl gridmix": lambda: mixing.gridmix(x, y, lam=0.3, perm=perm),
        "hf_mixssl smoothmix": lambda: mixing.smoothmix(x, y, lam=0.3, perm=perm),
        "hf_mixssl resizemix": lambda: mixing.resizemix(x, y, perm=perm),
        "hf_mixssl saliencymix": lambda: mixing.saliencymix(x, y, lam=0.3, perm=perm),
    }
    rows = []
    for name, fn in cases.items():
        seconds = time_steps(fn, steps=args.steps, warmup=2, device=device)
        rows.append({"row": name, "calls_per_sec": 1.0 / seconds})
    return rows


def automix_rows(args, device) -> list[dict]:
    """An AutoMix train step vs a Mixup classifier train step (images/s and the cost ratio)."""
    from hf_mixssl import AutoMixConfig, AutoMixModel, MixupClassifierConfig, MixupForImageClassification

    common = dict(backbone=args.backbone, num_labels=100, image_size=args.image_size)
    models = {
        "Mixup classifier step": MixupForImageClassification(MixupClassifierConfig(mix_modes=["mixup"], **common)),
        "AutoMix step": AutoMixModel(AutoMixConfig(**common)),
    }
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 100, (args.batch_size,), device=device)
    rows = []
    for name, model in models.items():
        model.to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

        step = train_step(lambda model=model: model(pixel_values=x, labels=y).loss, opt, device=device,
                          bf16=args.bf16, after=getattr(model, "update_momentum", None) and
                          (lambda model=model: model.update_momentum(0.5)))

        with PeakMemory(device) as mem:
            seconds = time_steps(step, steps=args.steps, warmup=args.warmup, device=device)
        rows.append({"row": name, "images_per_sec": args.batch_size / seconds, "peak_mib": mem.peak_mib})
    rows[1]["cost_vs_mixup"] = rows[0]["images_per_sec"] / rows[1]["images_per_sec"]
    return rows


def mae_rows(args, device) -> list[dict]:
    """MAE step vs transformers' ViTMAEForPreTraining (same sizes) vs a bare timm ViT step on all patches."""
    import timm
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from hf_mixssl import MAEConfig, MAEModel

    width, depth, heads = args.mae_decoder
    ours = MAEModel(MAEConfig(backbone=args.mae_backbone, backbone_kwargs={"patch_size": args.mae_patch},
                              image_size=args.image_size, decoder_embed_dim=width, decoder_depth=depth,
                              decoder_num_heads=heads, norm_pix_loss=True))
    enc = ours.encoder
    peer = ViTMAEForPreTraining(ViTMAEConfig(
        hidden_size=enc.embed_dim, num_hidden_layers=len(enc.blocks), num_attention_heads=enc.blocks[0].attn.num_heads,
        intermediate_size=4 * enc.embed_dim, image_size=args.image_size, patch_size=args.mae_patch,
        decoder_hidden_size=width, decoder_num_hidden_layers=depth, decoder_num_attention_heads=heads,
        decoder_intermediate_size=4 * width, mask_ratio=0.75, norm_pix_loss=True))
    bare = timm.create_model(args.mae_backbone, patch_size=args.mae_patch, img_size=args.image_size, num_classes=10)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    losses = {
        "timm ViT supervised step, all patches": (bare, lambda m: F.cross_entropy(m(x), y)),
        "hf_mixssl MAE step (mask 0.75)": (ours, lambda m: m(pixel_values=x).loss),
        "transformers ViTMAEForPreTraining step (peer)": (peer, lambda m: m(pixel_values=x).loss),
    }
    rows = []
    for name, (model, loss_fn) in losses.items():
        model.to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))

        step = train_step(lambda model=model, loss_fn=loss_fn: loss_fn(model), opt, device=device, bf16=args.bf16)

        with PeakMemory(device) as mem:
            seconds = time_steps(step, steps=args.steps, warmup=args.warmup, device=device)
        rows.append({"row": name, "images_per_sec": args.batch_size / seconds, "peak_mib": mem.peak_mib})
        model.to("cpu")
    return rows


def official_patch_pipeline(num_patches: int):
    """EMP-SSL's ``ContrastiveLearningViewGenerator``: one torchvision/PIL pipeline call per patch."""
    import random

    from PIL import ImageFilter, ImageOps
    from torchvision import transforms as T

    class GBlur:
        def __init__(self, p):
            self.p = p

        def __call__(self, img):
            if random.random() < self.p:
                return img.filter(ImageFilter.GaussianBlur(random.random() * 1.9 + 0.1))
            return img

    aug = T.Compose([
        T.RandomResizedCrop(32, scale=(0.25, 0.25), ratio=(1, 1)), T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.2)], p=0.8), T.RandomGrayscale(p=0.2), GBlur(p=0.1),
        T.RandomApply([T.Lambda(ImageOps.solarize)], p=0.1), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3),
    ])
    return lambda img: [aug(img) for _ in range(num_patches)]


def emp_ssl_rows(args, device) -> list[dict]:
    """Patch generation (ours batched vs the official per-patch PIL pipeline) and the EMP-SSL train step."""
    from datasets import load_dataset

    from hf_mixssl import EMPSSLConfig, EMPSSLModel
    from hf_mixssl.models.multipatch import MultiPatchViews

    images = [row["img"].convert("RGB") for row in load_dataset(args.dataset, split="test", streaming=True)
              .take(args.emp_images)]
    tensor = torch.stack([torch.from_numpy(__import__("numpy").asarray(im)).permute(2, 0, 1) for im in images])
    tensor = (tensor.float() / 255).to(device)
    n = args.emp_patches
    ours = MultiPatchViews(num_patches=n)
    official = official_patch_pipeline(n)
    rows = []
    for name, fn in (("official per-patch PIL pipeline", lambda: [official(im) for im in images]),
                     ("hf_mixssl batched patches", lambda: ours(tensor))):
        seconds = time_steps(fn, steps=max(1, args.steps // 2), warmup=1, device=device)
        rows.append({"row": name, "patches_per_sec": n * len(images) / seconds})
    rows[1]["speedup"] = rows[1]["patches_per_sec"] / rows[0]["patches_per_sec"]

    model = EMPSSLModel(EMPSSLConfig(backbone=args.backbone, num_patches=n)).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    normalised = (tensor - 0.5) / 0.5  # the model's inputs (its config's mean/std)
    emp_step = train_step(lambda: model(pixel_values=normalised).loss, opt, device=device, bf16=args.bf16)

    import timm

    from hf_mixssl.models.backbones import apply_cifar_stem

    bare = apply_cifar_stem(timm.create_model(args.backbone, num_classes=10)).to(device).train()
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(n * len(images), 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n * len(images),), device=device)

    bare_step = train_step(lambda: F.cross_entropy(bare(x), y), bare_opt, device=device, bf16=args.bf16)

    for name, fn in (("timm supervised step on as many 32 px images (limit)", bare_step),
                     ("hf_mixssl EMP-SSL step (patches generated inside)", emp_step)):
        with PeakMemory(device) as mem:
            seconds = time_steps(fn, steps=args.steps, warmup=args.warmup, device=device)
        rows.append({"row": name, "patches_per_sec": n * len(images) / seconds, "peak_mib": mem.peak_mib})
    rows[3]["efficiency"] = rows[3]["patches_per_sec"] / rows[2]["patches_per_sec"]
    return rows


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
    p.add_argument("--suite", default="moco", choices=["moco", "mixing", "automix", "mae", "emp_ssl", "data", "all"])
    p.add_argument("--data_dir", default=None, help="suite data: where the synthetic ImageNet-like parquet is made")
    p.add_argument("--data_images", type=int, default=256, help="suite data: images in the synthetic dataset")
    p.add_argument("--data_batch_size", type=int, default=32, help="suite data: batch size")
    p.add_argument("--data_workers", type=int, nargs="+", default=[0, 1, 2], help="suite data: worker counts")
    p.add_argument("--malloc_defaults", action="store_true",
                   help="leave glibc's malloc thresholds as they are (on a CPU the trainer, and by default the "
                        "benchmark, keep freed memory: hf_mixssl.train.device.retain_freed_memory)")
    p.add_argument("--emp_images", type=int, default=100)
    p.add_argument("--emp_patches", type=int, default=20)
    p.add_argument("--mae_backbone", default="vit_tiny_patch16_224")
    p.add_argument("--mae_patch", type=int, default=4)
    p.add_argument("--mae_decoder", type=int, nargs=3, default=[512, 8, 16], metavar=("WIDTH", "DEPTH", "HEADS"))
    p.add_argument("--mix_batch", type=int, default=128)
    p.add_argument("--mix_size", type=int, default=224)
    p.add_argument("--output", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.malloc_defaults:
        from hf_mixssl.train.device import retain_freed_memory

        retain_freed_memory()  # as the trainer does on a CPU
    torch.manual_seed(0)
    precision = "bf16 autocast" if args.bf16 else "fp32"
    report: dict = {"device": device.type, "torch": torch.__version__}
    if args.suite in ("mixing", "all"):
        rows = mixing_rows(args, device)
        print(f"\nmixers on {args.mix_batch}x3x{args.mix_size}x{args.mix_size}, {device.type}\n")
        print("| mixer | calls/s |\n|---|---|")
        for r in rows:
            print(f"| {r['row']} | {r['calls_per_sec']:.1f} |")
        report["mixing"] = rows
    if args.suite in ("automix", "all"):
        rows = automix_rows(args, device)
        print(f"\n{args.backbone}, {args.image_size} px, batch {args.batch_size}, {device.type} {precision}\n")
        print("| step | images/s | cost vs Mixup | peak memory (MiB) |\n|---|---|---|---|")
        for r in rows:
            ratio = f"{r['cost_vs_mixup']:.2f}x" if "cost_vs_mixup" in r else "1.00x"
            print(f"| {r['row']} | {r['images_per_sec']:.0f} | {ratio} | {r['peak_mib']:.0f} |")
        report["automix"] = rows
    if args.suite in ("mae", "all"):
        rows = mae_rows(args, device)
        w, d, h = args.mae_decoder
        print(f"\n{args.mae_backbone} patch {args.mae_patch}, {args.image_size} px, decoder {w}x{d}x{h}, batch "
              f"{args.batch_size}, {device.type} {precision}\n")
        print("| step | images/s | peak memory (MiB) |\n|---|---|---|")
        for r in rows:
            print(f"| {r['row']} | {r['images_per_sec']:.0f} | {r['peak_mib']:.0f} |")
        report["mae"] = rows
    if args.suite in ("emp_ssl", "all"):
        rows = emp_ssl_rows(args, device)
        print(f"\nEMP-SSL, {args.emp_images} images x {args.emp_patches} patches, {args.backbone} CIFAR stem, "
              f"{device.type} {precision}\n")
        print("| row | patches/s | speedup / efficiency | peak memory (MiB) |\n|---|---|---|---|")
        for r in rows:
            ratio = r.get("speedup", r.get("efficiency"))
            mib = f"{r['peak_mib']:.0f}" if "peak_mib" in r else ""
            print(f"| {r['row']} | {r['patches_per_sec']:.0f} | {'' if ratio is None else f'{ratio:.2f}'} | {mib} |")
        report["emp_ssl"] = rows
    if args.suite in ("data", "all"):
        rows = data_rows(args)
        print(f"\ntwo MoCo v2 views at 224 px per image, synthetic 500x375 JPEGs, batch {args.data_batch_size}, "
              f"CPU\n")
        print("| pipeline | images/s | per worker | vs 1 worker |\n|---|---|---|---|")
        for r in rows:
            scale = f"{r['scaling_vs_1_worker']:.2f}x" if r["scaling_vs_1_worker"] else ""
            print(f"| {r['row']} | {r['images_per_sec']:.1f} | {r['per_worker']:.1f} | {scale} |")
        costs = per_image_costs(args)
        print("\n| per image | ms | ratio |\n|---|---|---|")
        for r in costs:
            ratio = r.get("vs_official", r.get("speedup_vs_pil"))
            print(f"| {r['row']} | {r['ms_per_image']:.2f} | {'' if ratio is None else f'{ratio:.2f}'} |")
        report["data"] = rows + costs
    if args.suite in ("moco", "all"):
        report["moco"] = moco_suite(args, device)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def moco_suite(args, device) -> dict:
    """The MoCo rows: limit, MoCo v2/v3, lightly peer, data pipeline."""
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
    return {"setting": title, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
