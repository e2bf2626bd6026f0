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
