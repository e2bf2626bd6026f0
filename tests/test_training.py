"""End-to-end behaviour of the pretraining loop on the real CIFAR-10 shards (tiny backbone)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_pretrain, tiny_run, two_process_launch
from hf_mixssl.train.arguments import parse_args
from hf_mixssl.train.loop import NonFiniteLossError, learning_rate_at, list_checkpoints


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model.safetensors"))


class TestShortRun:
    def test_real_run_writes_a_loadable_model_and_metrics(self, tmp_path, cifar10):
        from transformers import AutoModel

        out = tmp_path / "run"
        result = run_pretrain(tiny_run(out, cifar10, max_steps=6, knn_every=3, knn_train_samples=256,
                                       knn_test_samples=128, report_to="tensorboard", checkpointing_steps=3))
        assert result["global_step"] == 6 and 0.0 <= result["knn_top1"] <= 1.0
        evals = json.loads((out / "eval_results.json").read_text())
        assert evals["knn_top1"] == result["knn_top1"] and evals["knn_test_samples"] == 128
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        steps = [r for r in logged if "loss" in r]
        assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
        for key in ("loss", "loss_12", "lr", "momentum", "images_per_sec", "epoch"):
            assert key in steps[-1]
        assert sum("knn_top1" in r for r in logged) == 2  # at step 3 and at the end
        assert list((out / "run").glob("events.out.tfevents.*")), "tensorboard events missing"
        args = json.loads((out / "training_args.json").read_text())
        assert args["model_config"]["backbone"] == "test_resnet"
        import hf_mixssl  # noqa: F401

        model = AutoModel.from_pretrained(out).eval()
        assert type(model).__name__ == "MoCoModel"
        import timm

        encoder = timm.create_model(f"local-dir:{out / 'encoder'}", pretrained=True).eval()  # stock timm
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(encoder(x), model.get_encoder().eval()(x), atol=1e-5)
        assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000003", "step_00000006"]


class TestMixupRun:
    def test_mixup_classifier_run_reports_top1(self, tmp_path, cifar10):
        from transformers import AutoModelForImageClassification

        out = tmp_path / "mix"
        result = run_pretrain(tiny_run(out, cifar10, method="mixup", mix_modes=["mixup", "cutmix", "manifoldmix"],
                                       mix_alpha=[1.0], knn_test_samples=128, knn_every=2, max_steps=4,
                                       image_every=0))
        assert 0.0 <= result["top1"] <= 1.0 and result["eval_samples"] == 128
        assert json.loads((out / "eval_results.json").read_text())["top1"] == result["top1"]
        import hf_mixssl  # noqa: F401

        model = AutoModelForImageClassification.from_pretrained(out)
        assert model.config.num_labels == 10  # detected from the ClassLabel feature
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert sum("top1" in r for r in logged) == 2 and any("mix_lam" in r for r in logged)
        assert {p.name.split("_", 2)[2] for p in (out / "images").glob("*.png")} == {"mix_mixup.png", "mix_cutmix.png"}

    def test_automix_run_reports_top1_with_mixblock_lr_group(self, tmp_path, cifar10):
        out = tmp_path / "automix"
        result = run_pretrain(tiny_run(out, cifar10, method="automix", momentum=0.999, mixblock_stage=3,
                                       mixblock_lr_scale=0.5, mixblock_momentum=0.0, mixblock_min_lr=0.001,
                                       knn_test_samples=64, max_steps=3, knn_every=0,
                                       image_every=2,
                                       checkpointing_steps=3))
        assert 0.0 <= result["top1"] <= 1.0 and 0.0 <= result["top1_online"] <= 1.0
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        for key in ("loss_one", "loss_mix", "loss_mixblock", "loss_mask", "mask_mean", "momentum"):
            assert key in logged[0], key
        opt = torch.load(out / "checkpoints" / "step_00000003" / "optimizer.bin", weights_only=False)
        lrs = [g["lr"] for g in opt["param_groups"]]
        # at the last step the backbone's cosine reached min_lr (0), the MixBlock's its own end x its lr_scale
        assert lrs[0] == pytest.approx(0.0) and lrs[1] == pytest.approx(0.5 * 0.001)
        assert [g["momentum"] for g in opt["param_groups"]] == [0.9, 0.0]  # OpenMixup's paramwise momentum 0
        from PIL import Image

        pictures = sorted((out / "images").glob("*automix_masks.png"))
        assert pictures, "AutoMix masks were not written"
        grid = Image.open(pictures[-1])
        assert grid.size[1] > 4 * 32  # four rows: images, partners, masks, mixed

    def test_moco_field_rejected_for_mixup(self, tmp_path, cifar10):
        with pytest.raises(ValueError, match="queue_size"):
            run_pretrain(tiny_run(tmp_path, cifar10, method="mixup", queue_size=64))


class TestMAERun:
    def test_mae_run_logs_loss_pictures_knn_and_exports_a_timm_vit(self, tmp_path, cifar10):
        import timm
        from PIL import Image
        from transformers import AutoModel

        import hf_mixssl  # noqa: F401
        out = tmp_path / "mae"
        result = run_pretrain(tiny_run(
            out, cifar10, method="mae", max_steps=3, image_every=2, knn_every=0, knn_train_samples=128,
            knn_test_samples=64, warmup_steps=1))
        assert 0.0 <= result["knn_top1"] <= 1.0
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
        pictures = sorted((out / "images").glob("*mae_reconstruction.png"))
        assert len(pictures) == 2  # at step 2 and at the end
        assert Image.open(pictures[-1]).size[1] == 4 * 34 + 2  # original / masked / reconstruction / pasted
        opt = torch.load(out / "checkpoints" / "step_00000003" / "optimizer.bin", weights_only=False)
        assert opt["param_groups"][0]["betas"] == (0.9, 0.95) and {g["weight_decay"] for g in opt["param_groups"]} == {0.0, 0.05}
        encoder = timm.create_model(f"local-dir:{out / 'encoder'}", pretrained=True)
        assert encoder.patch_embed.patch_size == (8, 8) and encoder.num_classes == 0

        # fine-tune the MAE encoder with the mixup classifier: architecture, kwargs and weights come from the run
        from hf_mixssl.train.arguments import resolve
        from hf_mixssl.train.loop import build_model

        ft = tiny_run(tmp_path / "ft", cifar10, method="mixup", backbone=None, image_size=None, init_backbone=str(out),
                      num_labels=10)
        classifier = build_model(resolve(ft))
        assert classifier.config.backbone == "vit_tiny_patch16_224" and classifier.config.image_size == 32
        mae_encoder = AutoModel.from_pretrained(out).encoder.state_dict()
        assert all(torch.equal(v, mae_encoder[k]) for k, v in classifier.backbone.state_dict().items())
        result = run_pretrain({**ft, "max_steps": 2, "knn_every": 0, "knn_test_samples": 32})
        assert 0.0 <= result["top1"] <= 1.0
        with pytest.raises(ValueError, match="init_backbone applies to method 'mixup'"):
            resolve(tiny_run(tmp_path / "mae_ft", cifar10, method="mae", init_backbone=str(out)))
        with pytest.raises(ValueError, match="neither an exported timm encoder"):
            build_model(resolve({**ft, "init_backbone": str(tmp_path)}))


class TestEMPSSLRun:
    def test_emp_ssl_run_with_lars_and_bag_of_features(self, tmp_path, cifar10):
        out = tmp_path / "emp"
        result = run_pretrain(tiny_run(
            out, cifar10, method="emp_ssl", num_patches=4, eval_patches=2, hidden_dim=64, z_dim=32, max_steps=3, knn_every=0,
            knn_train_samples=64, knn_test_samples=32, checkpointing_steps=3, image_every=0, image_size=32))
        assert 0.0 <= result["knn_top1"] <= 1.0
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert all(k in logged[0] for k in ("loss", "loss_invariance", "loss_tcr"))
        opt = torch.load(out / "checkpoints" / "step_00000003" / "optimizer.bin", weights_only=False)
        group = opt["param_groups"][-1]
        assert group["trust_coeff"] == 0.005 and group["trust_clip"] and group["nesterov"]
        assert list((out / "images").glob("*emp_ssl_patches.png"))


class TestResume:
    @pytest.mark.parametrize("augment_on", ["cpu", "device"])
    def test_resume_is_exact(self, tmp_path, cifar10, augment_on):
        straight = tmp_path / "straight"
        run_pretrain(tiny_run(straight, cifar10, max_steps=20, checkpointing_steps=10, augment_on=augment_on))
        resumed = tmp_path / "resumed"
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(straight / "checkpoints" / "step_00000010", resumed / "checkpoints" / "step_00000010")
        result = run_pretrain(tiny_run(resumed, cifar10, max_steps=20, checkpointing_steps=10,
                                       resume_from_checkpoint="latest", augment_on=augment_on))
        assert f"colour ops on the {'device' if augment_on == 'device' else 'CPU workers'}" in \
            (resumed / "train.log").read_text()
        assert result["global_step"] == 20
        a, b = weights(straight), weights(resumed)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6, rtol=0), name
        # The optimizer state continued too (momentum buffers of SGD).
        opt_a = torch.load(straight / "checkpoints" / "step_00000020" / "optimizer.bin", weights_only=False)
        opt_b = torch.load(resumed / "checkpoints" / "step_00000020" / "optimizer.bin", weights_only=False)
        assert opt_a["param_groups"][0]["nesterov"] is False  # plain momentum SGD, as in MoCo
        for k, v in opt_a["state"].items():
            assert torch.allclose(v["momentum_buffer"], opt_b["state"][k]["momentum_buffer"], atol=1e-6)

    def test_missing_checkpoint_path_is_an_error(self, tmp_path, cifar10):
        with pytest.raises(ValueError, match="not a checkpoint"):
            run_pretrain(tiny_run(tmp_path / "r", cifar10, resume_from_checkpoint=str(tmp_path / "nope")))


class TestFailures:
    def test_nan_loss_stops_and_keeps_last_checkpoint(self, tmp_path, cifar10):
        out = tmp_path / "nan"
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+: loss.*Last good checkpoint"):
            run_pretrain(tiny_run(out, cifar10, max_steps=50, learning_rate=1e30, checkpointing_steps=1))
        ckpts = list_checkpoints(out / "checkpoints")
        assert ckpts, "a checkpoint from before the failure must remain"
        for name, t in load_file(str(ckpts[-1] / "model.safetensors")).items():
            assert torch.isfinite(t.float()).all(), name

    def test_bad_images_are_skipped_and_logged(self, tmp_path, messy_dataset):
        out = tmp_path / "messy"
        result = run_pretrain(tiny_run(out, messy_dataset, per_device_batch_size=8, max_steps=6, logging_steps=3))
        assert result["global_step"] == 6
        last = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][-1]
        assert last["images_corrupt"] >= 2 and last["images_too_small"] >= 1 and last["images_converted"] >= 3
        assert "images skipped or converted so far" in (out / "train.log").read_text()

    def test_invalid_arguments_name_the_field(self, tmp_path, cifar10):
        with pytest.raises(ValueError, match="per_device_batch_size"):
            run_pretrain(tiny_run(tmp_path, cifar10, per_device_batch_size=0))
        with pytest.raises(ValueError, match="tau"):
            run_pretrain(tiny_run(tmp_path, cifar10, tau=-1.0))
        with pytest.raises(ValueError, match="not valid for method .moco_v2.: lerning_rate"):
            run_pretrain(tiny_run(tmp_path, cifar10, lerning_rate=0.1))


def _script(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "pretrain.py"), *args]


def _cli(out: Path, dataset: str, *extra: str) -> list[str]:
    return _script("--method", "moco_v2", "--views", "moco_cifar", "--dataset", dataset, "--backbone",
                   "test_resnet", "--image_size", "32", "--per_device_batch_size", "16", "--queue_size", "64",
                   "--output_dir", str(out), "--knn_every", "-1", "--num_workers", "0", "--report_to", "none",
                   "--logging_steps", "1", *extra)


class TestSignals:
    def test_sigterm_saves_and_resume_continues(self, tmp_path, cifar10):
        out = tmp_path / "sig"
        proc = subprocess.Popen(_cli(out, cifar10, "--max_steps", "100000", "--checkpointing_steps", "0"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = out / "train_log.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output[-3000:]
        ckpts = list_checkpoints(out / "checkpoints")
        assert len(ckpts) == 1
        step = json.loads((ckpts[0] / "trainer_state.json").read_text())["global_step"]
        assert step >= 3
        done = subprocess.run(_cli(out, cifar10, "--max_steps", str(step + 2), "--resume_from_checkpoint", "latest"),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"resumed from {ckpts[0]}" in done.stderr
        assert json.loads((out / "eval_results.json").read_text())["global_step"] == step + 2

    def test_kill_9_during_save_leaves_previous_checkpoint(self, tmp_path, cifar10):
        out = tmp_path / "kill"
        # Kill the process with SIGKILL in the middle of its second checkpoint: after accelerate has written
        # part of the files, before the atomic rename.
        killer = (
            "import os, signal, sys, runpy\n"
            "import accelerate\n"
            "orig = accelerate.Accelerator.save_state\n"
            "calls = []\n"
            "def save_state(self, output_dir=None, **kw):\n"
            "    calls.append(output_dir)\n"
            "    r = orig(self, output_dir, **kw)\n"
            "    if len(calls) == 2:\n"
            "        open(os.path.join(output_dir, 'model.safetensors'), 'wb').write(b'half')\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return r\n"
            "accelerate.Accelerator.save_state = save_state\n"
            f"sys.argv = {_cli(out, cifar10, '--max_steps', '10', '--checkpointing_steps', '2')[1:]!r}\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        )
        proc = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL
        assert (out / "checkpoints" / ".tmp_step_00000004").exists()
        assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002"]
        done = subprocess.run(_cli(out, cifar10, "--max_steps", "4", "--resume_from_checkpoint", "latest"),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resumed from" in done.stderr and "step_00000002" in done.stderr


class TestMomentumAndAccumulation:
    def test_key_encoder_moves_once_per_optimizer_step(self, tmp_path, cifar10):
        from hf_mixssl.train.arguments import resolve
        from hf_mixssl.train.loop import build_model

        values = tiny_run(tmp_path / "acc", cifar10, max_steps=1, gradient_accumulation_steps=3, momentum=0.5,
                          bn_splits=1)
        args = resolve(values)
        torch.manual_seed(args.seed)
        initial = build_model(args).state_dict()
        run_pretrain(values)
        final = weights(tmp_path / "acc")
        for name, q0 in initial.items():
            if not name.startswith("backbone.") or not q0.is_floating_point() or "running" in name:
                continue
            k1, q1 = final["backbone_k." + name[len("backbone."):]], final[name]
            # one EMA step from k0 = q0: k1 = 0.5 * q0 + 0.5 * q1 (three micro-steps would give another value)
            assert torch.allclose(k1, 0.5 * q0 + 0.5 * q1, atol=1e-6), name
        assert int(final["queue.ptr"]) == 3 * 16  # every micro-step enqueued its keys


class TestDistributed:
    @pytest.mark.parametrize("extra,queue_ptr", [
        ([], (3 * 2 * 16) % 64),  # 3 steps x 2 ranks x 16 keys: keys from both ranks were gathered
        (["--unmix", "--gradient_accumulation_steps", "2", "--queue_size", "80"], (3 * 2 * 2 * 16) % 80),
    ], ids=["moco", "unmix-accumulation"])
    def test_two_process_gloo_run(self, tmp_path, cifar10, extra, queue_ptr):
        """A real 2-rank gloo group through the CLI users type (`accelerate launch --multi_gpu`)."""
        out = tmp_path / "ddp"
        launch = two_process_launch()
        # The kNN monitor runs through the script too (the `evaluate` package must not be shadowed).
        cmd = launch + _cli(out, cifar10, "--max_steps", "3", "--checkpointing_steps", "2", "--knn_every", "0",
                            "--knn_train_samples", "64", "--knn_test_samples", "32", *extra)[1:]
        proc = subprocess.run(cmd, env={**os.environ, "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        final = weights(out)
        assert int(final["queue.ptr"]) == queue_ptr  # mixed keys never enter the queue
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert ("loss_mix" in logged[0]) == bool(extra)
        ckpt = out / "checkpoints" / "step_00000002"
        assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
        states = [json.loads((ckpt / f"stream_state_{r}.json").read_text()) for r in (0, 1)]
        assert all(s["position"] >= 32 for s in states)
        assert json.loads((ckpt / "trainer_state.json").read_text())["num_processes"] == 2
        assert json.loads((out / "eval_results.json").read_text())["knn_test_samples"] == 32


    def test_two_process_automix(self, tmp_path, cifar10):
        """AutoMix under DDP (its parts learn from different losses: find_unused_parameters)."""
        out = tmp_path / "ddp_automix"
        launch = two_process_launch()
        cmd = launch + _script("--preset", "automix_cifar", "--dataset", cifar10, "--backbone", "test_resnet",
                               "--per_device_batch_size", "16", "--max_steps", "2", "--output_dir", str(out),
                               "--knn_test_samples", "32", "--num_workers", "0", "--report_to", "none",
                               "--image_every", "-1")[1:]
        proc = subprocess.run(cmd, env={**os.environ, "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "eval_results.json").read_text())["eval_samples"] == 32


class TestArguments:
    def test_precedence_preset_file_cli(self, tmp_path):
        cfg = tmp_path / "run.yaml"
        cfg.write_text("learning_rate: 0.5\nper_device_batch_size: 64\nmax_steps: 7\n")
        args = parse_args(["--preset", "moco_v2_cifar", "--config", str(cfg), "--per_device_batch_size", "32"])
        assert args.method == "moco_v2" and args.model_settings["queue_size"] == 4096  # preset
        assert args.bn_group_size == 64
        assert args.learning_rate == 0.5 and args.max_steps == 7  # file over preset
        assert args.per_device_batch_size == 32  # CLI over file
        assert args.global_batch_size is None  # the preset's global batch gave way to the file's per-device one

    def test_no_trainer_names_are_aliases(self):
        ours = parse_args(["--method", "moco_v2", "--per_device_batch_size", "8", "--num_epochs", "2", "--dataset",
                           "x", "--lr_schedule", "constant", "--warmup_steps", "3", "--report_to", "all"])
        theirs = parse_args(["--method", "moco_v2", "--per_device_train_batch_size", "8", "--num_train_epochs", "2",
                             "--dataset_name", "x", "--lr_scheduler_type", "constant", "--num_warmup_steps", "3",
                             "--with_tracking"])
        assert ours == theirs
        assert parse_args(["--method", "moco_v2", "--train_dir", "imgs", "--max_train_steps", "4"]).dataset == "imgs"

    def test_abbreviations_are_refused(self, capsys):
        with pytest.raises(SystemExit):
            parse_args(["--method", "moco_v2", "--per_device", "8", "--max_steps", "1"])
        assert "unknown flag --per_device; did you mean --per_device_batch_size" in capsys.readouterr().err

    def test_missing_trackers_are_named_once(self, caplog):
        import logging

        from hf_mixssl.train.loop import _trackers

        import importlib.util

        installed = [n for n, m in (("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb"),
                                    ("trackio", "trackio")) if importlib.util.find_spec(m) is not None]
        with caplog.at_level(logging.WARNING, logger="hf_mixssl"):
            assert _trackers("all") == installed
            assert not caplog.records  # "all" means the installed ones, quietly
            assert _trackers("no_such_tracker,tensorboard,another_one") == ["tensorboard"]
        (record,) = caplog.records
        assert "no_such_tracker, another_one" in record.getMessage()

    def test_bad_config_file(self, tmp_path):
        with pytest.raises(ValueError, match="does not exist"):
            parse_args(["--method", "moco_v2", "--config", str(tmp_path / "missing.yaml")])

    def test_preset_method_mismatch(self):
        with pytest.raises(ValueError, match="preset 'moco_v2_cifar' is for method 'moco_v2'"):
            parse_args(["--method", "moco_v3", "--preset", "moco_v2_cifar"])

    def test_learning_rate_schedule(self):
        assert learning_rate_at(0, total=10, warmup=2, peak=1.0, final=0.0, schedule="cosine") == 0.5
        assert learning_rate_at(2, total=10, warmup=2, peak=1.0, final=0.0, schedule="cosine") == 1.0
        assert learning_rate_at(10, total=10, warmup=2, peak=1.0, final=0.1, schedule="cosine") == pytest.approx(0.1)


def test_data_workers_do_not_inherit_the_stop_handler(tmp_path, cifar10):
    """Pool.terminate() SIGTERMs the data workers: they must exit, and never write to the run's log."""
    out = tmp_path / "workers"
    run_pretrain(tiny_run(out, cifar10, num_workers=2, max_steps=2, knn_every=0, knn_train_samples=64,
                          knn_test_samples=32))
    assert "signal 15" not in (out / "train.log").read_text()


def test_cpu_threads_default_to_this_process_share_of_the_cores(tmp_path, cifar10):
    """`accelerate launch` exports OMP_NUM_THREADS=1 on CPU; the trainer takes the cores back (or obeys the flag)."""
    import os

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_pretrain(tiny_run(tmp_path / "a", cifar10, max_steps=1))
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        run_pretrain(tiny_run(tmp_path / "b", cifar10, max_steps=1, cpu_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class TestNothingLost:
    def test_a_used_output_dir_is_refused_or_replaced(self, tmp_path, cifar10):
        out = tmp_path / "run"
        run_pretrain(tiny_run(out, cifar10, max_steps=1, checkpointing_steps=1))
        first = (out / "model.safetensors").read_bytes()
        with pytest.raises(ValueError, match="already holds files.*--overwrite_output_dir"):
            run_pretrain(tiny_run(out, cifar10, max_steps=1, seed=1))
        assert (out / "model.safetensors").read_bytes() == first  # untouched
        run_pretrain(tiny_run(out, cifar10, max_steps=2, seed=1, overwrite_output_dir=True, checkpointing_steps=1))
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged if "loss" in r] == [1, 2]  # only the new run's lines
        assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000001", "step_00000002"]

    def test_unlabelled_train_only_data_trains_saves_and_exports(self, tmp_path, cifar10):
        import timm
        from datasets import Dataset, Features, Image, load_dataset

        rows = [{"image": r["img"]} for r in load_dataset(cifar10, split="test", streaming=True).take(48)]
        data = tmp_path / "unlabelled" / "data"
        data.mkdir(parents=True)
        Dataset.from_list(rows, features=Features({"image": Image()})).to_parquet(str(data / "train-0.parquet"))
        out = tmp_path / "run"
        result = run_pretrain(tiny_run(out, str(data.parent), max_steps=2, knn_every=1))
        assert result["global_step"] == 2 and "knn_top1" not in result
        for name in ("config.json", "model.safetensors", "encoder/model.safetensors", "README.md"):
            assert (out / name).is_file(), name
        log = (out / "train.log").read_text()
        assert log.count("evaluation will be skipped") == 1 and "no test/validation split" in log
        timm.create_model(f"local-dir:{out / 'encoder'}", pretrained=True)

    def test_monitor_probe_logs_its_accuracy_at_every_evaluation(self, tmp_path, cifar10):
        out = tmp_path / "run"
        result = run_pretrain(tiny_run(out, cifar10, max_steps=2, knn_every=1, monitor_probe="emp_ssl",
                                       knn_train_samples=200, knn_test_samples=64))
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        evals = [r for r in logged if "knn_top1" in r]
        assert len(evals) == 2 and all(0.0 <= r["linear_emp_ssl_top1"] <= r["linear_emp_ssl_top5"] <= 1.0
                                       for r in evals)
        assert "linear_emp_ssl_top1" in result and "linear_emp_ssl_source" not in result
        assert (out / "train.log").read_text().count("linear_emp_ssl_top1") == 2  # logged at each evaluation

    def test_labelled_train_only_data_evaluates_on_a_held_out_slice(self, tmp_path, cifar10):
        from datasets import Dataset, load_dataset

        from hf_mixssl.data.stream import count_rows, parse_split
        from hf_mixssl.train.loop import held_out_splits

        rows = list(load_dataset(cifar10, split="test", streaming=True).take(80))
        data = tmp_path / "labelled" / "data"
        data.mkdir(parents=True)
        features = load_dataset(cifar10, split="test", streaming=True).features
        Dataset.from_list(rows, features=features).to_parquet(str(data / "train-0.parquet"))
        assert held_out_splits("train", 80, 0.25) == ("train[20:]", "train[:20]")
        assert parse_split("train[20:]") == ("train", 20, None) and count_rows(str(data.parent), "train[:20]") == 20
        with pytest.raises(ValueError, match="row counts"):
            parse_split("train[:10%]")
        out = tmp_path / "run"
        result = run_pretrain(tiny_run(out, str(data.parent), max_steps=2, knn_every=1, train_val_split=0.25,
                                       knn_train_samples=None, knn_test_samples=None))
        assert result["knn_test_samples"] == 20 and result["knn_train_samples"] == 60  # disjoint: 60 + 20 rows
        saved = json.loads((out / "training_args.json").read_text())
        assert saved["train_split"] == "train[20:]" and saved["eval_split"] == "train[:20]"
        with pytest.raises(ValueError, match="either --eval_split or --train_val_split"):
            run_pretrain(tiny_run(tmp_path / "b", str(data.parent), max_steps=1, train_val_split=0.25,
                                  eval_split="train"))

    def test_resume_checks_what_it_resumes_and_keeps_the_log_clean(self, tmp_path, cifar10, caplog):
        import logging

        out = tmp_path / "run"
        run_pretrain(tiny_run(out, cifar10, max_steps=4, checkpointing_steps=2))
        shutil.rmtree(out / "checkpoints" / "step_00000004")  # as if killed after step 4 was logged
        with pytest.raises(ValueError, match=r"per_device_batch: checkpoint 16, now 32"):
            run_pretrain(tiny_run(out, cifar10, max_steps=4, per_device_batch_size=32,
                                  resume_from_checkpoint="latest"))
        with pytest.raises(ValueError, match="is a 'moco_v2' run; this run is 'moco_v1'"):
            run_pretrain(tiny_run(out, cifar10, method="moco_v1", max_steps=4, resume_from_checkpoint="latest"))
        # a checkpoint written before a config setting existed (here: vit_init) resumes: it held the default then
        state_file = out / "checkpoints" / "step_00000002" / "trainer_state.json"
        state = json.loads(state_file.read_text())
        del state["exact"]["model_config"]["vit_init"]
        state_file.write_text(json.dumps(state))
        with caplog.at_level(logging.WARNING, logger="hf_mixssl"):
            run_pretrain(tiny_run(out, cifar10, max_steps=4, learning_rate=0.01, checkpointing_steps=2,
                                  resume_from_checkpoint="latest"))
        assert any("learning_rate: checkpoint 0.05, now 0.01" in r.getMessage() for r in caplog.records)
        steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
        assert steps == [1, 2, 3, 4]  # steps 3-4 of the first segment were dropped, not repeated
        history = [json.loads(line) for line in (out / "training_args_history.jsonl").read_text().splitlines()]
        assert history[-1]["learning_rate"] == 0.05
        assert json.loads((out / "training_args.json").read_text())["learning_rate"] == 0.01

    def test_a_full_disk_during_a_checkpoint_names_the_directory_and_the_last_good_checkpoint(
            self, tmp_path, cifar10, monkeypatch):
        """A full disk cannot be made here: accelerate's save_state raises what safetensors raises on one."""
        from accelerate import Accelerator
        from safetensors import SafetensorError

        from hf_mixssl.train.loop import CheckpointError

        real, calls = Accelerator.save_state, []

        def save_state(self, output_dir=None, **kw):
            calls.append(output_dir)
            if len(calls) == 2:
                raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                      'message: "No space left on device" })')
            return real(self, output_dir, **kw)

        monkeypatch.setattr(Accelerator, "save_state", save_state)
        out = tmp_path / "run"
        with pytest.raises(CheckpointError) as info:
            run_pretrain(tiny_run(out, cifar10, max_steps=4, checkpointing_steps=2))
        message = str(info.value)
        assert str(out / "checkpoints") in message and "No space left on device" in message
        assert f"last good checkpoint is {out / 'checkpoints' / 'step_00000002'}" in message
        assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002"]
        assert not list((out / "checkpoints").glob(".tmp_*"))  # no half-written checkpoint left behind


class TestBackbonePretrained:
    @pytest.fixture(scope="class")
    def exports(self, tmp_path_factory):
        import timm
        from safetensors.torch import save_file

        from hf_mixssl.sharing.hub import export_encoder

        root = tmp_path_factory.mktemp("exports")
        torch.manual_seed(3)
        resnet = timm.create_model("test_resnet", num_classes=0)
        export_encoder(resnet, root / "resnet", image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
        save_file(resnet.state_dict(), str(root / "resnet.safetensors"))
        vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, patch_size=8, depth=1, img_size=32)
        export_encoder(vit, root / "vit", image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
        return root, resnet.state_dict(), vit.state_dict()

    @pytest.mark.parametrize("method,source", [("moco_v2", "local-dir:{root}/resnet"), ("mixup", "{root}/resnet"),
                                               ("automix", "{root}/resnet.safetensors")])
    def test_every_backbone_and_momentum_copy_start_from_the_weights(self, exports, tmp_path, cifar10, method,
                                                                     source):
        from hf_mixssl.train.arguments import resolve
        from hf_mixssl.train.loop import build_model

        root, resnet, _ = exports
        model = build_model(resolve(tiny_run(tmp_path, cifar10, method=method,
                                             backbone_pretrained=source.format(root=root))))
        copies = [model.backbone] + ([model.backbone_k] if hasattr(model, "backbone_k") else [])
        for module in copies:
            state = module.state_dict()
            assert all(torch.equal(state[k], v) for k, v in resnet.items())

    def test_mae_keeps_its_fixed_positions(self, exports, tmp_path, cifar10):
        from hf_mixssl.train.arguments import resolve
        from hf_mixssl.train.loop import build_model

        root, _, vit = exports
        model = build_model(resolve(tiny_run(tmp_path, cifar10, method="mae", backbone_pretrained=str(root / "vit"))))
        state = model.encoder.state_dict()
        assert torch.equal(state["blocks.0.attn.qkv.weight"], vit["blocks.0.attn.qkv.weight"])
        assert not torch.equal(state["pos_embed"], vit["pos_embed"])  # still the sin-cos table

    def test_weights_that_do_not_fit_are_named(self, exports, tmp_path, cifar10):
        from hf_mixssl.train.arguments import resolve
        from hf_mixssl.train.loop import build_model

        root, _, _ = exports
        with pytest.raises(ValueError, match="backbone_pretrained .*resnet does not fit backbone 'test_resnet'"):
            build_model(resolve(tiny_run(tmp_path, cifar10, cifar_stem=True, backbone_pretrained=str(root / "resnet"))))
        with pytest.raises(ValueError, match="neither hf-hub"):
            build_model(resolve(tiny_run(tmp_path, cifar10, backbone_pretrained=str(tmp_path / "nothing"))))


def test_random_init_baseline_is_measured_beside_the_run(tmp_path, cifar10):
    out = tmp_path / "run"
    result = run_pretrain(tiny_run(out, cifar10, max_steps=2, knn_every=0, knn_train_samples=128, knn_test_samples=64,
                                   knn_random_baseline=True))
    assert 0.0 <= result["random_init_knn_top1"] <= 1.0 and "knn_top1" in result
    evals = json.loads((out / "eval_results.json").read_text())
    assert evals["random_init_knn_top1"] == result["random_init_knn_top1"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert [r.metric_value for r in card.data.eval_results] == [round(100 * result["knn_top1"], 2)]  # not the baseline
