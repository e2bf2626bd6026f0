"""``datasets`` streaming -> fixed-size batches of views, with exact resume and a bad-image policy.

Pipeline per rank::

    load_dataset(path, split, streaming=True)          # raw rows; images kept as undecoded bytes
      -> shuffle(seed, buffer_size).set_epoch(epoch)   # reproducible order per epoch
      -> split_dataset_by_node(rank, world)            # each rank reads its own part
      -> raw chunks read in the main process           # cheap: bytes only
      -> decode + views in worker processes            # the expensive part, in parallel, ordered

Every sample's augmentation is seeded from ``(seed, epoch, rank, row index)``, so the views do not depend
on the number of workers, and the stream position is one number per epoch: resuming skips the raw rows
already consumed and reproduces the same batches. Bad images (corrupt or truncated bytes, tiny images)
are skipped and counted; grayscale, CMYK, RGBA and palette images are converted to RGB and counted.
The stream is deliberately *not* passed through ``accelerator.prepare`` (that would re-shard it).
"""

from __future__ import annotations

import atexit
import io
import itertools
import logging
import signal
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger("hf_mixssl")

IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "jpg", "png", "jpeg", "picture")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "cls", "class", "target")


# ------------------------------------------------------------------------------------ columns
def detect_columns(
    features: Any, column_names: list[str], *, image_column: str | None, label_column: str | None,
    source: str,
) -> tuple[str, str | None]:
    """Pick the image and label columns: explicit names win, then feature types, then common names.

    Raises ``ValueError`` naming the dataset and listing its columns when no image column exists.
    """
    from datasets import Image as ImageFeature

    if image_column is not None and image_column not in column_names:
        raise ValueError(f"image_column {image_column!r} is not a column of {source}; columns: {column_names}")
    if label_column is not None and label_column not in column_names:
        raise ValueError(f"label_column {label_column!r} is not a column of {source}; columns: {column_names}")
    feats = dict(features or {})
    if image_column is None:
        typed = [c for c in column_names if isinstance(feats.get(c), ImageFeature)]
        named = [c for c in IMAGE_COLUMN_CANDIDATES if c in column_names]
        if not (typed or named):
            raise ValueError(
                f"{source} has no image column (no Image feature and none of {IMAGE_COLUMN_CANDIDATES}); "
                f"columns: {column_names}. Pass --image_column."
            )
        image_column = (typed or named)[0]
    return image_column, label_column or detect_label_column(features, column_names)


def detect_label_column(features: Any, column_names: list[str]) -> str | None:
    """The label column: a ``ClassLabel`` feature, else the first of the common names, else ``None``."""
    from datasets import ClassLabel

    feats = dict(features or {})
    typed = [c for c in column_names if isinstance(feats.get(c), ClassLabel)]
    named = [c for c in LABEL_COLUMN_CANDIDATES if c in column_names]
    return (typed or named or [None])[0]


# ------------------------------------------------------------------------------------ decoding
def decode_image(value: Any, *, min_size: int = 4, max_pixels: int | None = None) -> tuple[Image.Image | None, str]:
    """Undecoded dataset cell -> ``(RGB image or None, status)``.

    ``status`` is ``"ok"``, ``"converted:<mode>"`` (made RGB), ``"corrupt"``, ``"too_small"`` or ``"too_large"``.
    Accepts ``{"bytes", "path"}`` dicts (``Image(decode=False)``), raw bytes, paths and PIL images. Images above
    ``max_pixels`` (default: PIL's ``MAX_IMAGE_PIXELS``, 89.5 MP) are never decoded at full size: JPEGs are
    decoded downscaled (``Image.draft``, by 1/2, 1/4 or 1/8) to fit, others are skipped as ``too_large``
    (PIL's ``DecompressionBombError``, above twice the limit, is not an ``OSError`` and would end a worker).
    """
    limit = max_pixels or Image.MAX_IMAGE_PIXELS or (1 << 62)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # handled below, by size
            img = _open_image(value)
        if img is None:
            return None, "corrupt"
        if img.size[0] * img.size[1] > limit:
            if img.format == "JPEG":
                scale = 2
                while scale < 8 and img.size[0] * img.size[1] > limit * scale * scale:
                    scale *= 2
                img.draft(img.mode, (img.size[0] // scale, img.size[1] // scale))
            if img.size[0] * img.size[1] > limit:
                return None, "too_large"
        img.load()  # truncated files fail here, not later inside a transform
    except Image.DecompressionBombError:
        return None, "too_large"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError):
        return None, "corrupt"
    if min(img.size) < min_size:
        return None, "too_small"
    if img.mode == "RGB":
        return img, "ok"
    mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: dropping alpha would expose whatever colour hides under transparency.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB"), f"converted:{mode}"


def _open_image(value: Any) -> Image.Image | None:
    """Open (header only) a dataset cell: a PIL image, ``{"bytes", "path"}``, bytes or a path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        return Image.open(io.BytesIO(data)) if data is not None else Image.open(path)
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, str):
        return Image.open(value)
    return None


def sample_seed(seed: int, epoch: int, rank: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation (SplitMix64-style mixing of the four integers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB + index) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 29
    return x & (2**63 - 1)


@dataclass
class _Chunk:
    """Raw rows handed to a worker: their stream indices, undecoded images and labels."""

    epoch: int
    indices: list[int]
    images: list[Any]
    labels: list[int]


def process_chunk(
    chunk: _Chunk, transform: Callable[[Image.Image], Any], seed: int, rank: int, min_size: int
) -> tuple[list[int], tuple[torch.Tensor, ...] | None, list[int], Counter, list[tuple[int, str | None, str]]]:
    """Decode and transform a chunk; returns ``(kept indices, stacked outputs, labels, status counts, skipped)``
    where ``skipped`` lists ``(row, image path or None, reason)`` of the images left out.

    A transform returns a tensor (views) or a tuple of tensors (views and their device-side parameters); each
    part is stacked over the chunk's kept samples."""
    kept, tensors, labels, counts, skipped = [], [], [], Counter(), []
    for idx, value, label in zip(chunk.indices, chunk.images, chunk.labels):
        img, status = decode_image(value, min_size=min_size)
        counts[status.split(":")[0]] += 1
        if status.startswith("converted"):
            counts[status] += 1
        if img is None:
            skipped.append((idx, value.get("path") if isinstance(value, dict) else None, status))
            continue
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator draws view parameters; torch.manual_seed would also queue lazy CUDA/XPU/MTIA
            # seeding with a captured stack trace per call (0.5 ms a sample, a tenth of a 224 px MoCo v2 pair).
            torch.default_generator.manual_seed(sample_seed(seed, chunk.epoch, rank, idx))
            out = transform(img)
        tensors.append(out if isinstance(out, tuple) else (out,))
        kept.append(idx)
        labels.append(label)
    return kept, (tuple(torch.stack(p) for p in zip(*tensors)) if tensors else None), labels, counts, skipped


def _worker_init() -> None:
    torch.set_num_threads(1)  # workers parallelise across processes; threads would oversubscribe cores
    # Forked workers inherit the trainer's handlers: Ctrl-C is the parent's to handle, and SIGTERM (sent when
    # the stream stops) must end a worker, not set the parent's stop flag in a copy of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for handler in list(logging.getLogger("hf_mixssl").handlers):  # the run's train.log belongs to the parent
        logging.getLogger("hf_mixssl").removeHandler(handler)


# Arrow's parquet reader may still have background threads right after a stream is closed; an interpreter that
# exits then aborts ("terminate called without an active exception", apache/arrow#45214). datasets sleeps 5 s
# at every close for this; we wait only at exit, and only for what is left of those 5 s.
_ARROW_GRACE_S = 5.0
_closed_at = [float("-inf")]


@atexit.register
def _let_arrow_threads_finish() -> None:
    remaining = _ARROW_GRACE_S - (time.monotonic() - _closed_at[0])
    if remaining > 0:
        time.sleep(remaining)


class DataWorkerError(RuntimeError):
    """A data worker process died; the batches it held are lost, so the stream cannot continue."""


def _result(future):
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise DataWorkerError(
            "a data worker process died (killed by a signal or the out-of-memory killer?); the stream cannot "
            "continue. Resume from the last checkpoint with --resume_from_checkpoint latest"
        ) from e


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel queued chunks and end the workers now (SIGTERM; they run the default handler)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()


# ------------------------------------------------------------------------------------ stream
@dataclass
class StreamState:
    """Where a rank's stream stands: the epoch and the raw rows consumed by emitted batches."""

    epoch: int = 0
    position: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class ImageStream:
    """A rank's batches over a ``datasets`` split: ``{"pixel_values": [B, ...], "labels": [B]}``.

    Args:
        dataset: path or Hub id for ``load_dataset``.
        split: split name.
        transform: ``PIL -> tensor`` (a view generator or an eval transform).
        batch_size: per-device batch size; training batches are always full (``drop_last``).
        name: dataset config name.
        image_column / label_column: auto-detected when ``None``.
        shuffle: shuffle with ``seed`` and ``buffer_size`` (reshuffled every epoch).
        seed, rank, world_size: reproducibility and the rank's share of the stream.
        num_workers: decode/augment processes (0 = in the main process).
        infinite: cycle epochs forever (training) instead of one pass (evaluation, partial last batch).
        max_samples: stop after this many raw rows per pass (evaluation subsets).
        min_image_size: images with a side below this are skipped.
    """

    dataset: str
    split: str
    transform: Callable[[Image.Image], torch.Tensor]
    batch_size: int
    name: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    shuffle: bool = True
    seed: int = 0
    buffer_size: int = 10_000
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    infinite: bool = True
    max_samples: int | None = None
    min_image_size: int = 4
    chunk_size: int = 64
    name_skipped: int = 10  # skipped images named in the log one by one; the rest are counted
    state: StreamState = field(default_factory=StreamState)
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        self._base = self._load()
        self._named_skips = 0

    # -- construction
    def _load(self):
        from datasets import Image as ImageFeature

        source = f"dataset {self.dataset!r} (split {self.split!r})"
        try:
            ds = load_split(self.dataset, self.split, name=self.name)
        except (ValueError, FileNotFoundError) as e:  # unknown split or path: say which
            raise ValueError(f"cannot load {source}: {e}") from e
        columns = list(ds.column_names or (ds.features or {}).keys())
        self.image_column, self.label_column = detect_columns(
            ds.features, columns, image_column=self.image_column, label_column=self.label_column, source=source
        )
        keep = [self.image_column] + ([self.label_column] if self.label_column else [])
        ds = ds.select_columns(keep)
        if isinstance((ds.features or {}).get(self.image_column), ImageFeature):
            ds = ds.cast_column(self.image_column, ImageFeature(decode=False))  # decode in workers, safely
        if self.shuffle:
            # One input shard at a time feeds the buffer (shard order is still shuffled per epoch): datasets 5.2
            # interleaves up to 10 shards through a thread pool whose shutdown sleeps 5 s (an Arrow workaround),
            # measured at every epoch end and every stream close: 5 s per epoch, a third of a GPU CIFAR epoch.
            ds = ds.shuffle(seed=self.seed, buffer_size=self.buffer_size, max_buffer_input_shards=1)
        if self.world_size > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds

    def on_device(self, device: torch.device | str) -> Iterator[dict[str, torch.Tensor]]:
        """The batches moved to ``device`` (pinned first on CUDA, copied asynchronously) and finished there by the
        transform's ``finish(x, params)``: views travel as ``uint8``; normalisation, and with device augmentation
        the colour ops, run on the device."""
        device = torch.device(device)
        finish = getattr(self.transform, "finish", None)
        batches = iter(self)
        try:
            for batch in batches:
                x, y, params = batch["pixel_values"], batch["labels"], batch.get("view_params")
                if device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(device, non_blocking=True)
                if params is not None:
                    params = params.to(device, non_blocking=True)
                yield {"pixel_values": finish(x, params) if finish else x,
                       "labels": y.to(device, non_blocking=True)}
        finally:
            batches.close()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = StreamState(epoch=int(state["epoch"]), position=int(state["position"]))

    def state_dict(self) -> dict[str, int]:
        return self.state.state_dict()

    # -- iteration
    def _raw_chunks(self, epoch: int, start: int) -> Iterator[_Chunk]:
        ds = self._base
        if self.shuffle:
            ds.set_epoch(epoch)
        rows = enumerate(iter(ds))
        end = self.max_samples
        # Skipping reads only undecoded bytes, so resuming mid-epoch is cheap.
        rows = itertools.islice(rows, start, end)
        while True:
            block = list(itertools.islice(rows, self.chunk_size))
            if not block:
                return
            yield _Chunk(
                epoch=epoch,
                indices=[i for i, _ in block],
                images=[r[self.image_column] for _, r in block],
                labels=[int(r[self.label_column]) if self.label_column else -1 for _, r in block],
            )

    def _processed(self, chunks: Iterator[_Chunk], pool) -> Iterator[tuple]:
        args = (self.transform, self.seed, self.rank, self.min_image_size)
        if pool is None:
            for chunk in chunks:
                yield process_chunk(chunk, *args)
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(process_chunk, chunk, *args))
            if len(pending) >= 2 * self.num_workers:  # bounded prefetch keeps memory flat
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pool = None
        if self.num_workers > 0:
            # A ProcessPoolExecutor, not a Pool: when a worker dies (OOM killer, a signal, a crash in a decoder)
            # its pending chunks fail with BrokenProcessPool instead of waiting forever.
            ctx = torch.multiprocessing.get_context("fork")
            pool = ProcessPoolExecutor(self.num_workers, mp_context=ctx, initializer=_worker_init)
        try:
            while True:
                emitted = 0
                for batch in self._one_epoch(pool):
                    emitted += 1
                    yield batch
                if not self.infinite:
                    return
                if emitted == 0 and self.state.position == 0:
                    raise ValueError(
                        f"dataset {self.dataset!r} split {self.split!r} gives this rank fewer than "
                        f"batch_size={self.batch_size} usable images per epoch"
                    )
                self.state = StreamState(epoch=self.state.epoch + 1, position=0)
        except BaseException:  # closed (GeneratorExit) or failed mid-stream: Arrow's reader threads may still run
            _closed_at[0] = time.monotonic()
            raise
        finally:
            if pool is not None:
                _stop_pool(pool)

    def _one_epoch(self, pool) -> Iterator[dict[str, Any]]:
        epoch, start = self.state.epoch, self.state.position
        buf_idx: list[int] = []
        buf_x: list[tuple[torch.Tensor, ...]] = []
        buf_y: list[int] = []
        for kept, x, labels, counts, skipped in self._processed(self._raw_chunks(epoch, start), pool):
            self.counts.update(counts)  # the trainer logs these totals
            for row, path, reason in skipped:
                self._named_skips += 1
                if self._named_skips <= self.name_skipped:
                    logger.warning("skipped image: %s split %r, epoch %d, row %d of rank %d's stream%s: %s%s",
                                   self.dataset, self.split, epoch, row, self.rank, f" ({path})" if path else "",
                                   reason, "" if self._named_skips < self.name_skipped else
                                   " (further skips are only counted)")
            if x is None:
                continue
            buf_idx.extend(kept)
            buf_x.extend(zip(*(part.unbind(0) for part in x)))
            buf_y.extend(labels)
            while len(buf_x) >= self.batch_size:
                yield self._emit(buf_idx, buf_x, buf_y, self.batch_size)
        if buf_x and not self.infinite:
            yield self._emit(buf_idx, buf_x, buf_y, len(buf_x))

    def _emit(self, idx: list[int], xs: list[tuple[torch.Tensor, ...]], ys: list[int], n: int) -> dict[str, Any]:
        parts = [torch.stack(p) for p in zip(*xs[:n])]
        batch = {"pixel_values": parts[0], "labels": torch.tensor(ys[:n], dtype=torch.long)}
        if len(parts) > 1:  # device augmentation: each view's random parameters, applied on the device
            batch["view_params"] = parts[1]
        # The position is the row after the last emitted sample; buffered leftovers are re-read on resume.
        self.state = StreamState(epoch=self.state.epoch, position=idx[n - 1] + 1)
        del idx[:n], xs[:n], ys[:n]
        return batch


def parse_split(split: str) -> tuple[str, int | None, int | None]:
    """``"train[:5000]"`` -> ``("train", None, 5000)``; ``"train[5000:]"`` -> ``("train", 5000, None)``; a plain name
    -> ``(name, None, None)``. The row slice of ``datasets``' split syntax, in absolute row counts (streams are read
    in order, so a slice is the same rows every time)."""
    import re

    match = re.fullmatch(r"\s*([^\[\]]+?)\s*(?:\[\s*(\d*)\s*:\s*(\d*)\s*\])?\s*", split or "")
    if match is None:
        raise ValueError(f"split {split!r} is not a split name or name[start:stop] with row counts "
                         f"(e.g. 'train[:5000]', 'train[5000:]')")
    name, start, stop = match.groups()
    return name, int(start) if start else None, int(stop) if stop else None


def load_split(dataset: str, split: str, *, name: str | None = None):
    """``load_dataset(dataset, name, split, streaming=True)`` with the row slice of :func:`parse_split` applied
    (``skip`` / ``take``, before any shuffle)."""
    from datasets import load_dataset

    base, start, stop = parse_split(split)
    ds = load_dataset(dataset, name, split=base, streaming=True)
    if start:
        ds = ds.skip(start)
    if stop is not None:
        ds = ds.take(stop - (start or 0)) if stop > (start or 0) else ds.take(0)
    return ds


def count_rows(dataset: str, split: str, *, name: str | None = None) -> int:
    """Number of rows in a split: from the dataset's metadata when present, else by one cheap pass."""
    base, start, stop = parse_split(split)
    ds = load_split(dataset, split, name=name)
    splits = getattr(getattr(ds, "info", None), "splits", None) or {}
    if base in splits and splits[base].num_examples:  # the whole split's count, then the slice's share of it
        total = int(splits[base].num_examples)
        return max(0, min(total, stop if stop is not None else total) - (start or 0))
    cols = list(ds.column_names or [])
    small = [c for c in cols if c in LABEL_COLUMN_CANDIDATES] or cols[:1]
    return sum(1 for _ in ds.select_columns(small))


def class_names(dataset: str, split: str, *, name: str | None = None, label_column: str | None = None) -> list[str] | None:
    """The names of a ``ClassLabel`` label column, or ``None`` (plain integer labels, or no labels)."""
    from datasets import ClassLabel

    ds = load_split(dataset, split, name=name)
    feats = dict(ds.features or {})
    column = label_column or detect_label_column(feats, list(ds.column_names or feats))
    feature = feats.get(column) if column else None
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def count_classes(dataset: str, split: str, *, name: str | None = None, label_column: str | None = None) -> int:
    """Number of classes: from a ``ClassLabel`` feature, else ``max(label) + 1`` over one cheap pass."""
    from datasets import ClassLabel

    ds = load_split(dataset, split, name=name)
    columns = list(ds.column_names or [])
    feats = dict(ds.features or {})
    label_column = label_column or detect_label_column(feats, columns)
    if label_column is None:
        raise ValueError(f"dataset {dataset!r} has no label column; columns: {columns}. Pass --label_column")
    if isinstance(feats.get(label_column), ClassLabel):
        return int(feats[label_column].num_classes)
    return 1 + max(int(r[label_column]) for r in ds.select_columns([label_column]))
