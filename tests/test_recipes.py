"""Recipes that mean the same on any world size, and details checked against the official code (hand copies)."""

import math

import pytest
import torch

from hf_mixssl.train.loop import BatchPlan, learning_rate_at


class TestBatchPlan:
    def test_global_batch_and_bn_groups_on_any_world_size(self):
        # MoCo v1/v2 ImageNet: 256 = 8 GPUs x 32, per-GPU BN. One device holds 8 BN groups of 32.
        one = BatchPlan.resolve(global_batch=256, per_device=999, processes=1, accumulation=1, bn_group=32)
        eight = BatchPlan.resolve(global_batch=256, per_device=999, processes=8, accumulation=1, bn_group=32)
        assert (one.global_batch, one.per_device, one.bn_splits) == (256, 256, 8)
        assert (eight.global_batch, eight.per_device, eight.bn_splits) == (256, 32, 1)
        two_acc = BatchPlan.resolve(global_batch=4096, per_device=1, processes=2, accumulation=4, bn_group=None)
        assert (two_acc.per_device, two_acc.global_batch, two_acc.bn_splits) == (512, 4096, None)
        plain = BatchPlan.resolve(global_batch=None, per_device=64, processes=2, accumulation=3, bn_group=None)
        assert plain.global_batch == 384

    def test_batches_that_do_not_divide_are_named(self):
        with pytest.raises(ValueError, match="global_batch_size 100 does not divide over 3 process"):
            BatchPlan.resolve(global_batch=100, per_device=1, processes=3, accumulation=1, bn_group=None)
        with pytest.raises(ValueError, match="per-device batch 48 is not a multiple of bn_group_size 32"):
            BatchPlan.resolve(global_batch=96, per_device=1, processes=2, accumulation=1, bn_group=32)

    def test_presets_state_global_batches(self):
        from hf_mixssl.train.arguments import parse_args

        args = parse_args(["--preset", "moco_v2_imagenet", "--max_steps", "1"])
        assert (args.global_batch_size, args.bn_group_size) == (256, 32)
        args = parse_args(["--preset", "moco_v3_resnet50", "--max_steps", "1"])
        assert args.global_batch_size == 4096 and args.scale_lr and args.min_crop_scale == 0.2
        # a per-device batch on the command line replaces the preset's global batch
        args = parse_args(["--preset", "moco_v2_cifar", "--per_device_batch_size", "128", "--max_steps", "1"])
        assert args.global_batch_size is None and args.per_device_batch_size == 128
        # and explicit BN splits replace the preset's BN group size
        args = parse_args(["--preset", "moco_v2_cifar", "--bn_splits", "1", "--max_steps", "1"])
        assert args.bn_group_size is None and args.model_settings["bn_splits"] == 1


def official_moco_adjust_learning_rate(lr, epoch, *, cos, epochs, schedule):
    """Hand copy of facebookresearch/moco main_moco.py adjust_learning_rate (args inlined)."""
    if cos:  # cosine lr schedule
        lr *= 0.5 * (1. + math.cos(math.pi * epoch / epochs))
    else:  # stepwise lr schedule
        for milestone in schedule:
            lr *= 0.1 if epoch >= milestone else 1.
    return lr


def test_moco_v1_step_schedule_equals_the_official_one():
    from hf_mixssl.train.arguments import parse_args

    args = parse_args(["--preset", "moco_v1_imagenet", "--max_steps", "1"])
    assert args.lr_schedule == "step" and args.lr_decay_epochs == [120, 160]
    steps_per_epoch = 5
    milestones = tuple(int(round(e * steps_per_epoch)) for e in args.lr_decay_epochs)
    for step in range(200 * steps_per_epoch):
        ours = learning_rate_at(step, total=1000, warmup=0, peak=0.03, final=0.0, schedule="step",
                                milestones=milestones)
        official = official_moco_adjust_learning_rate(0.03, step // steps_per_epoch, cos=False, epochs=200,
                                                      schedule=[120, 160])
        assert ours == pytest.approx(official, rel=1e-12), step


@pytest.mark.parametrize("preset", ["moco_v2_imagenet", "moco_v2_cifar", "unmix_moco_cifar"])
def test_moco_cosine_schedule_holds_each_epoch_as_the_official_one(preset):
    from hf_mixssl.train.arguments import parse_args

    args = parse_args(["--preset", preset, "--max_steps", "1"])
    assert args.lr_by_epoch and args.lr_schedule == "cosine"
    steps_per_epoch, epochs = 7, 20
    for step in range(epochs * steps_per_epoch):
        ours = learning_rate_at(step, total=epochs * steps_per_epoch, warmup=0, peak=0.06, final=0.0,
                                schedule="cosine", epoch_steps=steps_per_epoch)
        official = official_moco_adjust_learning_rate(0.06, step // steps_per_epoch, cos=True, epochs=epochs,
                                                      schedule=[])
        assert ours == pytest.approx(official, rel=1e-12, abs=1e-15), step


@pytest.mark.parametrize("preset", ["moco_v1_imagenet", "moco_v2_imagenet", "moco_v2_cifar", "unmix_moco_cifar",
                                    "emp_ssl_cifar"])
def test_torchvision_resnet_init_where_the_official_code_uses_torchvision(preset):
    """torchvision resnet*() leaves the last BN of each block at gamma 1; timm zeroes it unless told not to."""
    import torchvision

    from hf_mixssl.methods import get_method
    from hf_mixssl.train.arguments import parse_args

    args = parse_args(["--preset", preset, "--max_steps", "1"])
    entry = get_method(args.method)
    settings = {**args.model_settings, "backbone": "resnet18"}
    model = entry.model_class(entry.make_config(**settings))
    ours = [blk.bn2.weight for layer in ("layer1", "layer2", "layer3", "layer4")
            for blk in getattr(model.get_encoder(), layer)]
    reference = torchvision.models.resnet18()
    official = [blk.bn2.weight for layer in ("layer1", "layer2", "layer3", "layer4") for blk in getattr(reference, layer)]
    assert len(ours) == len(official) and all(torch.equal(a, b) for a, b in zip(ours, official))  # all ones


def test_presets_that_zero_the_last_bn_keep_timm_default():
    from hf_mixssl.methods import get_method
    from hf_mixssl.train.arguments import parse_args

    args = parse_args(["--preset", "automix_cifar", "--max_steps", "1"])  # OpenMixup zeroes it
    entry = get_method(args.method)
    model = entry.model_class(entry.make_config(**args.model_settings, num_labels=10))
    assert all(float(blk.bn2.weight.detach().abs().sum()) == 0.0 for blk in model.backbone.layer1)


def test_recipe_details_from_the_official_files():
    from hf_mixssl.train.arguments import parse_args

    emp = parse_args(["--preset", "emp_ssl_cifar", "--max_steps", "1"])
    assert (emp.knn_k, emp.knn_t) == (20, 0.07)  # EMP-SSL evaluate.py
    vit = parse_args(["--preset", "moco_v3_vit", "--max_steps", "1"])
    assert vit.optimizer == "adamw" and not vit.exclude_bias_norm_wd  # AdamW over model.parameters()
    auto = parse_args(["--preset", "automix_cifar", "--max_steps", "1"])
    assert auto.min_lr == 0.05  # OpenMixup CosineAnnealing min_lr


def test_two_ranks_draw_their_own_randomness_and_share_the_batch_plan(tmp_path, cifar10):
    """A real 2-rank gloo run of Un-Mix: each rank logs its own lam; the resolved global batch is the preset's."""
    import json
    import subprocess
    import textwrap

    from conftest import REPO, two_process_launch

    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import torch
        from conftest import tiny_run
        from hf_mixssl.train.arguments import resolve
        from hf_mixssl.train.loop import Pretrainer
        values = tiny_run({str(tmp_path / 'run')!r}, {cifar10!r}, global_batch_size=32, per_device_batch_size=999,
                          unmix=True, max_steps=1)
        trainer = Pretrainer(resolve(values))
        batch = next(iter(trainer.stream.on_device(trainer.accelerator.device)))
        out = trainer.model(pixel_values=batch["pixel_values"])
        record = {{"rank": trainer.accelerator.process_index, "per_device": trainer.plan.per_device,
                  "global": trainer.plan.global_batch, "lam": float(out.unmix_lam), "draw": float(torch.rand(()))}}
        print("RANK " + json.dumps(record), flush=True)
        trainer.accelerator.end_training()
        trainer.close()
    """))
    import os

    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run([*two_process_launch(), str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import re

    records = [json.loads(m) for m in re.findall(r"RANK (\{[^}]*\})", proc.stdout)]  # the ranks' lines may interleave
    assert sorted(r["rank"] for r in records) == [0, 1]
    assert all(r["per_device"] == 16 and r["global"] == 32 for r in records)
    assert records[0]["draw"] != records[1]["draw"] and records[0]["lam"] != records[1]["lam"]


def test_knn_monitor_is_the_same_on_one_and_two_processes(tmp_path, messy_dataset):
    """Each rank extracts its share of both splits; the gathered kNN equals the single-process one."""
    import json
    import os
    import re
    import subprocess
    import textwrap

    from conftest import two_process_launch
    from hf_mixssl.evaluation.protocols import EvalData, knn_evaluate
    from hf_mixssl.methods import get_method

    entry = get_method("moco_v2")
    torch.manual_seed(0)
    model = entry.model_class(entry.config_class(version=2, backbone="test_resnet", image_size=32, queue_size=64))
    model.save_pretrained(tmp_path / "model")
    single = knn_evaluate(model, EvalData(messy_dataset), knn_k=5)
    script = tmp_path / "knn.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from accelerate import Accelerator
        import hf_mixssl
        from transformers import AutoModel
        from hf_mixssl.evaluation.protocols import EvalData, knn_evaluate
        acc = Accelerator()
        model = AutoModel.from_pretrained({str(tmp_path / 'model')!r})
        data = EvalData({messy_dataset!r}, rank=acc.process_index, world_size=acc.num_processes)
        print("RESULT " + json.dumps({{"rank": acc.process_index, **knn_evaluate(model, data, knn_k=5)}}), flush=True)
    """))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run([*two_process_launch(), str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(m) for m in re.findall(r"RESULT (\{[^}]*\})", proc.stdout)]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["knn_top1"] == pytest.approx(single["knn_top1"], abs=1e-9)
        assert (r["knn_train_samples"], r["knn_test_samples"]) == (single["knn_train_samples"], single["knn_test_samples"])


def test_a_presets_card_shows_its_curve_beside_the_published_one(tmp_path, cifar10):
    from PIL import Image

    from hf_mixssl.train.arguments import parse_args
    from hf_mixssl.train.loop import pretrain

    out = tmp_path / "colab"
    args = parse_args(["--preset", "moco_v2_cifar", "--dataset", cifar10, "--backbone", "test_resnet",
                       "--backbone_kwargs", "{}", "--per_device_batch_size", "16", "--bn_group_size", "8",
                       "--queue_size", "64", "--max_steps", "4", "--knn_every", "2", "--knn_train_samples", "128",
                       "--knn_test_samples", "64", "--num_workers", "0", "--report_to", "none",
                       "--checkpointing_steps", "0", "--image_every", "-1", "--output_dir", str(out)])
    pretrain(args)
    picture = Image.open(out / "published_curve.png")
    assert picture.size == (560, 340)
    card = (out / "README.md").read_text()
    assert "### Compared with the published numbers" in card and "moco_cifar10_demo.ipynb" in card
    assert "| 20 | 61.40 | |" in card and "![knn_top1" in card
    assert sum(line.startswith("| 0.0") for line in card.splitlines()) == 2  # the run's two kNN points


def test_preset_help_names_its_source_and_differences(capsys):
    from hf_mixssl.train.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--preset", "moco_v3_vit", "--help"])
    text = capsys.readouterr().out
    assert "published linear_top1 on ImageNet-1k: epoch 300: 73.2" in text and "vits.py" in text
