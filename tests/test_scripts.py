"""The command-line scripts as users run them."""

import json
import subprocess
import sys

from conftest import REPO, run_pretrain, tiny_run


def test_evaluate_script_knn_and_random_init(tmp_path, cifar10):
    out = tmp_path / "run"
    run_pretrain(tiny_run(out, cifar10, max_steps=2))
    common = ["--dataset", cifar10, "--knn_train_samples", "128", "--knn_test_samples", "64", "--num_workers", "0"]
    script = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", str(out)]
    trained = subprocess.run(script + common, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["backbone_knn_top1"] <= 1.0 and result["knn_test_samples"] == 64
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["backbone_knn_top1"] == result["backbone_knn_top1"] and saved["global_step"] == 2
    baseline = subprocess.run(script + common + ["--random_init"], capture_output=True, text=True, timeout=300)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    assert "random_init_backbone_knn_top1" in json.loads(baseline.stdout.strip().splitlines()[-1])


def test_evaluate_script_linear_probe_on_mae(tmp_path, cifar10):
    out = tmp_path / "mae"
    run_pretrain(tiny_run(out, cifar10, method="mae", max_steps=1))
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", str(out), "--dataset", cifar10,
           "--protocol", "knn", "linear", "--feature_pool", "mean", "--knn_train_samples", "256",
           "--knn_test_samples", "128", "--linear_epochs", "3", "--num_workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["mean_linear_top1"] <= result["mean_linear_top5"] <= 1.0
    assert "mean_knn_top1" in result and result["linear_test_samples"] == 128
    # kNN and the probe share one feature pass per split
    assert proc.stderr.count("features (train): 0batch") == 1 and proc.stderr.count("features (test): 0batch") == 1
    bad = subprocess.run(cmd[:6] + ["--eval_features", "projection"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--eval_features does not apply" in bad.stderr


def test_evaluate_script_finetune(tmp_path, cifar10):
    out = tmp_path / "run"
    run_pretrain(tiny_run(out, cifar10, max_steps=1))
    before = (out / "model.safetensors").read_bytes()
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", str(out), "--dataset", cifar10,
           "--protocol", "finetune", "--finetune_epochs", "1", "--finetune_train_samples", "64",
           "--finetune_batch_size", "16", "--knn_test_samples", "32", "--num_workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["backbone_finetune_top1"] <= result["backbone_finetune_top5"] <= 1.0
    assert result["finetune_steps"] == 4 and result["finetune_test_samples"] == 32
    assert "fine-tune" in proc.stderr and "features (test)" in proc.stderr  # progress bars
    assert (out / "model.safetensors").read_bytes() == before  # the pretrained model is not modified


def test_export_encoder_script(tmp_path, cifar10):
    import torch

    out = tmp_path / "run"
    run_pretrain(tiny_run(out, cifar10, max_steps=1, export_encoder=False))
    assert not (out / "encoder").exists()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_encoder.py"), str(out), "--output",
                           str(tmp_path / "enc")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import timm

    encoder = timm.create_model(f"local-dir:{tmp_path / 'enc'}", pretrained=True).eval()
    assert encoder(torch.randn(1, 3, 32, 32)).shape[-1] == encoder.num_features
    # the exported pretrained_cfg is this run's preprocessing and provenance, not timm's ImageNet weights
    data_config = timm.data.resolve_data_config({}, model=encoder)
    config = json.loads((out / "config.json").read_text())
    assert data_config["input_size"] == (3, 32, 32) and data_config["interpolation"] == "bilinear"
    assert data_config["mean"] == config["image_mean"] and data_config["crop_pct"] == 1.0
    assert not encoder.pretrained_cfg.get("paper_ids") and not encoder.pretrained_cfg.get("origin_url")
    exported = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert exported["hf_mixssl"]["method"] == "moco_v2" and "method: moco_v2" in encoder.pretrained_cfg["notes"]
    stem = tmp_path / "stem"
    run_pretrain(tiny_run(stem, cifar10, max_steps=1, cifar_stem=True))
    assert not (stem / "encoder").exists()  # a CIFAR stem is not expressible in timm's config
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "export_encoder.py"), str(stem)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "CIFAR-stem" in bad.stderr


def test_evaluate_script_bad_model_dir(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error:" in proc.stderr


def test_pretrain_help_lists_flags():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--method", "--preset", "--dataset", "--backbone_kwargs", "--cifar_stem", "--resume_from_checkpoint",
                 "--gradient_accumulation_steps", "--optimizer", "--knn_every", "--config", "--report_to"):
        assert flag in proc.stdout


def test_the_readme_main_job_runs(tmp_path):
    """The README's first command, as written (its dataset path resolved from the checkout), cut to 2 steps."""
    import shlex

    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("pip install") and "scripts/pretrain.py" in line)
    args = shlex.split(line.split("scripts/pretrain.py", 1)[1])
    args[args.index("--dataset") + 1] = str((REPO / args[args.index("--dataset") + 1]).resolve())
    args[args.index("--output_dir") + 1] = str(tmp_path / "quickstart")
    args += ["--max_steps", "2", "--knn_train_samples", "256", "--knn_test_samples", "128", "--num_workers", "0",
             "--report_to", "none"]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"knn_top1", "random_init_knn_top1"} <= set(result) and result["global_step"] == 2
