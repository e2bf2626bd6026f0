import itertools

import pytest
import torch

from hf_mixssl.data.stream import ImageStream, decode_image, detect_columns, sample_seed
from hf_mixssl.data.views import eval_transform, view_transform


def take(stream, n):
    it = iter(stream)
    try:
        return list(itertools.islice(it, n))
    finally:
        it.close()


class TestViews:
    @pytest.mark.parametrize("recipe", ["moco_v1", "moco_v2", "moco_cifar", "moco_v3"])
    def test_two_views_shape(self, recipe):
        from PIL import Image

        img = Image.new("RGB", (40, 30), (10, 200, 30))
        torch.manual_seed(0)
        views = view_transform(recipe, size=32)
        out = views(img)
        assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8  # views travel as uint8
        x = views.finish(out)
        assert x.dtype == torch.float32 and torch.allclose(  # torchvision's ToDtype(scale=True) + Normalize
            x, (out.float() / 255 - torch.tensor(views.mean).view(3, 1, 1)) / torch.tensor(views.std).view(3, 1, 1),
            atol=1e-5)

    def test_unknown_recipe(self):
        with pytest.raises(ValueError, match="view recipe"):
            view_transform("simclr", size=32)


class TestColumns:
    def test_missing_image_column_lists_columns(self):
        with pytest.raises(ValueError, match=r"no image column.*\['text', 'label'\]"):
            detect_columns({}, ["text", "label"], image_column=None, label_column=None, source="dataset 'x'")

    def test_explicit_unknown_column(self):
        with pytest.raises(ValueError, match="'picture' is not a column"):
            detect_columns({}, ["img"], image_column="picture", label_column=None, source="dataset 'x'")

    def test_detects_cifar_columns(self, cifar10):
        stream = ImageStream(cifar10, "test", eval_transform(size=32), 4, shuffle=False, infinite=False, max_samples=4)
        assert (stream.image_column, stream.label_column) == ("img", "label")

    def test_dataset_without_images_is_a_clear_error(self, tmp_path):
        from datasets import Dataset

        (tmp_path / "data").mkdir()
        Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(tmp_path / "data" / "train-0.parquet"))
        with pytest.raises(ValueError, match=r"no image column.*columns: \['text', 'label'\]"):
            ImageStream(str(tmp_path), "train", eval_transform(size=32), 2)

    def test_unknown_path(self, tmp_path):
        with pytest.raises(ValueError, match="cannot load dataset"):
            ImageStream(str(tmp_path / "nope"), "train", eval_transform(size=32), 2)


class TestBadImages:
    def test_decode_policy(self):
        from PIL import Image

        assert decode_image({"bytes": b"garbage", "path": None})[1] == "corrupt"
        img, status = decode_image(Image.new("CMYK", (8, 8)))
        assert img.mode == "RGB" and status == "converted:CMYK"
        img, status = decode_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
        assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent pixels become white, not black
        assert decode_image(Image.new("RGB", (1, 1)))[1] == "too_small"

    def test_oversized_images_are_never_decoded_at_full_size(self):
        import io

        from PIL import Image

        def png(size, mode="1"):
            buf = io.BytesIO()
            Image.new(mode, size).save(buf, format="PNG")
            return {"bytes": buf.getvalue(), "path": "bomb.png"}

        # 13500 x 13500 = 182 MP: above twice PIL's limit, Image.open raises DecompressionBombError (not OSError)
        assert decode_image(png((13500, 13500)))[1] == "too_large"
        # 10000 x 10000 = 100 MP: PIL would only warn and decode it all
        assert decode_image(png((10000, 10000)))[1] == "too_large"
        # a JPEG above the limit is decoded downscaled instead (draft), within the limit
        buf = io.BytesIO()
        Image.new("RGB", (120, 80), (10, 200, 30)).save(buf, format="JPEG")
        img, status = decode_image({"bytes": buf.getvalue(), "path": None}, max_pixels=2000)
        assert status == "ok" and img.size[0] * img.size[1] <= 2000 and img.size[0] >= 15

    def test_bad_rows_are_named_in_the_log(self, messy_dataset, caplog):
        import logging

        stream = ImageStream(messy_dataset, "train", view_transform("moco_cifar", size=32), 8, shuffle=False,
                             infinite=False, name_skipped=2)
        with caplog.at_level(logging.WARNING, logger="hf_mixssl"):
            take(stream, 100)
        named = [r.getMessage() for r in caplog.records if "skipped image" in r.getMessage()]
        assert len(named) == 2 and "row 20 of rank 0's stream: corrupt" in named[0]
        assert "further skips are only counted" in named[1]

    def test_stream_skips_and_counts(self, messy_dataset):
        stream = ImageStream(messy_dataset, "train", view_transform("moco_cifar", size=32), 8, shuffle=False,
                             infinite=False)
        batches = take(stream, 100)
        assert sum(b["pixel_values"].shape[0] for b in batches) == 40 + 3  # 3 converted, 3 skipped
        assert stream.counts["corrupt"] == 2 and stream.counts["too_small"] == 1
        assert stream.counts["converted"] == 3
        assert all(torch.isfinite(b["pixel_values"]).all() for b in batches)


class TestDeterminismAndResume:
    def _stream(self, cifar10, **kw):
        return ImageStream(cifar10, "train", view_transform("moco_cifar", size=32), 16, seed=3, buffer_size=256, **kw)

    def test_workers_do_not_change_batches(self, cifar10):
        a = take(self._stream(cifar10, num_workers=0), 3)
        b = take(self._stream(cifar10, num_workers=2), 3)
        for x, y in zip(a, b):
            assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["labels"], y["labels"])

    def test_resume_from_state_reproduces_the_stream(self, cifar10):
        full = take(self._stream(cifar10), 5)
        first = self._stream(cifar10)
        take(first, 2)
        state = first.state_dict()
        resumed = self._stream(cifar10)
        resumed.load_state_dict(state)
        rest = take(resumed, 3)
        for x, y in zip(full[2:], rest):
            assert torch.equal(x["pixel_values"], y["pixel_values"])

    def test_epochs_reshuffle_and_ranks_differ(self, cifar10):
        s = self._stream(cifar10, max_samples=None)
        s.state.epoch = 1
        e1 = take(s, 1)[0]["labels"]
        e0 = take(self._stream(cifar10), 1)[0]["labels"]
        r1 = take(self._stream(cifar10, rank=1, world_size=2), 1)[0]["labels"]
        assert not torch.equal(e0, e1) and not torch.equal(e0, r1)

    def test_sample_seed_spreads(self):
        seeds = {sample_seed(0, e, r, i) for e in range(3) for r in range(2) for i in range(100)}
        assert len(seeds) == 600


def test_a_dead_worker_is_an_error_not_a_hang(cifar10):
    """A worker killed mid-stream (OOM killer, a stray SIGKILL) must surface as an error naming the cause."""
    import os
    import signal

    from hf_mixssl.data.stream import DataWorkerError, ImageStream
    from hf_mixssl.data.views import view_transform

    stream = ImageStream(cifar10, "train", view_transform("classify", size=32), 32, shuffle=False, infinite=True,
                         num_workers=1)
    batches = iter(stream)
    next(batches)
    pool_pids = [p.pid for p in _worker_processes()]
    assert pool_pids
    os.kill(pool_pids[0], signal.SIGKILL)
    with pytest.raises(DataWorkerError, match="data worker process died"):
        for _ in range(50):
            next(batches)
    batches.close()


def _worker_processes():
    import multiprocessing

    return multiprocessing.active_children()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_row_slices_stay_disjoint_and_complete_on_every_world_size(tmp_path, world):
    """``train[:n]`` / ``train[n:]`` (``--train_val_split``) on each rank of ``world``: never an overlap, nothing
    lost. (When the processes divide the shards, ``datasets`` slices per shard: which rows are held out then
    depends on the number of processes.)"""
    from datasets import Dataset
    from datasets.distributed import split_dataset_by_node

    from hf_mixssl.data.stream import load_split

    root = tmp_path / "shards" / "data"
    root.mkdir(parents=True)
    for s in range(4):
        Dataset.from_dict({"idx": list(range(s * 25, s * 25 + 25))}).to_parquet(str(root / f"train-{s}.parquet"))
    held, train = [], []
    for rank in range(world):
        for split, rows in (("train[:20]", held), ("train[20:]", train)):
            ds = load_split(str(root.parent), split)
            if world > 1:
                ds = split_dataset_by_node(ds, rank=rank, world_size=world)
            rows += [r["idx"] for r in ds]
    assert len(held) == 20 and not set(held) & set(train) and sorted(held + train) == list(range(100))
