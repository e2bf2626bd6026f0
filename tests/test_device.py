"""Device-side settings: the bf16-on-CPU trap is detected and named, channels-last keeps values and trains."""

import json

import pytest
import torch
from PIL import Image, ImageFilter

from conftest import run_pretrain, tiny_run
from hf_mixssl.train.device import bf16_cpu_warning, cpu_flags, cpu_has_native_bf16, to_channels_last


def test_cpu_flags_and_native_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx2", "fma"} and not cpu_has_native_bf16(cpu_flags(info))
    info.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") == set()


def test_retained_memory_is_not_faulted_in_again():
    """After ``retain_freed_memory`` a freed 64 MiB tensor's pages are reused: allocating and filling it again
    costs no page faults in most rounds (a small allocation landing in the freed block now and then makes the heap
    grow once more), where glibc's defaults fault in all 16384 pages at every round. In fresh processes."""
    import subprocess
    import sys

    script = """
import resource, sys, torch
from hf_mixssl.train.device import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)  # 64 MiB, filled, then freed
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sorted(faults[1:])[4])  # the median round after the first
"""
    out = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
           .stdout.split() for mode in ("retain", "defaults")}
    assert out["retain"][0] == "True" and int(out["retain"][1]) < 1000, out
    assert int(out["defaults"][1]) > 15000, out


@pytest.mark.parametrize("retain", [True, False])
def test_cpu_training_retains_freed_memory_unless_told(tmp_path, cifar10, retain):
    run_pretrain(tiny_run(tmp_path, cifar10, max_steps=1, retain_freed_memory=retain))
    assert ("malloc keeps the memory it frees" in (tmp_path / "train.log").read_text()) == retain


def test_bf16_warning_only_where_it_is_a_trap():
    message = bf16_cpu_warning(device_type="cpu", mixed_precision="bf16", flags={"avx2"})
    assert "10x slower" in message and "--mixed_precision no" in message
    assert bf16_cpu_warning(device_type="cpu", mixed_precision="bf16", flags={"amx_bf16"}) is None
    assert bf16_cpu_warning(device_type="cpu", mixed_precision="no", flags={"avx2"}) is None
    assert bf16_cpu_warning(device_type="cuda", mixed_precision="bf16", flags=set()) is None


def test_a_bf16_run_on_an_avx2_cpu_warns(tmp_path, cifar10, monkeypatch):
    import hf_mixssl.train.device as device

    from accelerate.state import AcceleratorState

    monkeypatch.setattr(device, "cpu_flags", lambda *a, **k: {"avx2", "fma"})  # simulate the AVX2-only CPU
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(True)  # the precision is fixed when the process's first Accelerator is made
    try:
        out = tmp_path / "run"
        run_pretrain(tiny_run(out, cifar10, max_steps=1, knn_every=-1, export_encoder=False))
    finally:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
        AcceleratorState._reset_state(True)
    assert "without native bf16" in (out / "train.log").read_text()


def test_channels_last_keeps_values_and_trains(tmp_path, cifar10):
    x = torch.randn(4, 2, 3, 8, 8)
    y = to_channels_last(x)
    assert torch.equal(x, y) and all(y[:, v].is_contiguous(memory_format=torch.channels_last) for v in range(2))
    assert to_channels_last(x[:, 0]).is_contiguous(memory_format=torch.channels_last)
    out = tmp_path / "cl"
    result = run_pretrain(tiny_run(out, cifar10, max_steps=2, channels_last=True, knn_every=-1))
    assert result["global_step"] == 2
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged if "loss" in r)


def test_views_blur_is_mocos_pil_gaussian_blur():
    """moco/loader.py: ``x.filter(ImageFilter.GaussianBlur(radius=random.uniform(.1, 2.)))``."""
    from hf_mixssl.data.views import PILGaussianBlur

    img = Image.effect_noise((48, 40), 64).convert("RGB")
    torch.manual_seed(7)
    apply, u = torch.rand(()), torch.rand(())
    assert apply < 1.0
    expected = img.filter(ImageFilter.GaussianBlur(radius=0.1 + 1.9 * float(u)))  # the official op, same sigma
    torch.manual_seed(7)
    assert list(PILGaussianBlur(1.0)(img).getdata()) == list(expected.getdata())
    torch.manual_seed(7)
    assert PILGaussianBlur(0.0)(img) is img


def test_gpu_check_smoke_runs_on_the_cpu(tmp_path, cifar10):
    """scripts/gpu_check.sh as a person runs it, with --smoke: every row and the short run, on this CPU."""
    import subprocess

    from conftest import REPO

    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "--cifar", cifar10, "--output",
                           str(out), "--data_dir", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    cases = {r["case"] for r in report["rows"]}
    assert len(cases) == 3 and len(report["rows"]) == 9  # limit, device-fed and CPU-fed per case
    assert all(r["images_per_sec"] > 0 and r["peak_mib"] > 0 for r in report["rows"])
    assert [r["row"] for r in report["view_ops"]] == ["MoCo v2 device view ops, eager"]  # compiled: not in --smoke
    assert report["view_ops"][0]["ms_per_image"] > 0 and report["view_ops"][0]["vs_step"] > 0
    assert 0.0 <= report["knn_run"]["knn_top1"] <= 1.0
    assert "| MoCo v2 ResNet-50 224 px | synthetic tensors on the device (limit) |" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_torch_compile_trains_as_eager(tmp_path, cifar10, augment_on):
    """``--torch_compile`` (inductor on this CPU; minutes of compilation, hence slow): the same two steps as eager,
    the loss equal to float tolerance, and the saved model loads without the compiled wrapper's names. With
    ``--augment_on device`` the view ops are compiled too."""
    from transformers import AutoModel

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()
                if '"loss"' in line]

    run_pretrain(tiny_run(tmp_path / "eager", cifar10, max_steps=2, augment_on=augment_on))
    run_pretrain(tiny_run(tmp_path / "compiled", cifar10, max_steps=2, torch_compile=True, augment_on=augment_on))
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-3)
    AutoModel.from_pretrained(tmp_path / "compiled")  # strict load: no _orig_mod. prefixes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moco_v2", "moco_v3", "mixup", "automix", "mae", "emp_ssl"])
def test_compiled_forward_and_backward_equal_eager(name):
    """One training forward and backward of each method's tiny model, inductor against eager (the README's
    "compiled and eager gradients agree" figure): the same loss, gradients within 1e-3 relative."""
    import copy

    import torch._inductor.config as inductor_config

    from hf_mixssl.methods import get_method

    method = get_method(name)
    config = method.make_config(**{**method.defaults, **{k: v for k, v in method.tiny.items() if k != "views"}})
    torch.manual_seed(0)
    eager = method.model_class(config).train()
    compiled = copy.deepcopy(eager)
    x = torch.randn(8, 2, 3, 32, 32) if name.startswith("moco") else torch.randn(8, 3, 32, 32)
    y = torch.randint(0, getattr(config, "num_labels", None) or 10, (8,))
    inductor_config.fallback_random = True  # as the trainer sets it with --torch_compile

    def step(model):
        torch.manual_seed(1)
        out = model(pixel_values=x, **({"labels": y} if method.supervised else {}))
        out.loss.backward()
        return out.loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = step(eager)
    torch._dynamo.reset()
    compiled.compile()
    loss_b, grads_b = step(compiled)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    worst = max(((grads_a[n] - grads_b[n]).abs().max() / (grads_a[n].abs().max() + 1e-8)).item() for n in grads_a)
    assert worst < 1e-3, worst
