"""The official linear probes: LARS, schedules, crop and head init against hand copies of facebookresearch/mae
(``util/lars.py``, ``util/lr_sched.py``, ``util/crop.py``, ``main_linprobe.py``), facebookresearch/moco
``main_lincls.py`` and tsb0601/EMP-SSL ``func.py``; and each probe run end to end through ``scripts/evaluate.py``."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from hf_mixssl.evaluation.probes import (
    LARS, PROBES, mae_crop_params, probe_head, probe_learning_rate, probe_with,
)


# ----------------------------------------------------------------------------------------- hand copies
class OfficialLARS(torch.optim.Optimizer):
    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:  # if not normalization gamma/beta or bias
                    dp = dp.add(p, alpha=g['weight_decay'])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                                (g['trust_coefficient'] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def official_mae_adjust_learning_rate(epoch, args):
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    return lr


def official_lincls_adjust_learning_rate(epoch, args):
    lr = args.lr
    for milestone in args.schedule:
        lr *= 0.1 if epoch >= milestone else 1.0
    return lr


def official_mae_get_params(img_hw, scale, ratio):
    height, width = img_hw
    area = height * width
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    w = min(w, width)
    h = min(h, height)
    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()
    return i, j, h, w


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lars_equals_mae_lars(wd):
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(8, affine=False), torch.nn.Linear(8, 4))
    twin = torch.nn.Sequential(torch.nn.BatchNorm1d(8, affine=False), torch.nn.Linear(8, 4))
    twin.load_state_dict(head.state_dict())
    ours, theirs = LARS(head.parameters(), lr=0.5, weight_decay=wd), OfficialLARS(twin.parameters(), lr=0.5,
                                                                                  weight_decay=wd)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        for model, opt in ((head, ours), (twin, theirs)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(head.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_mae_schedule_equals_lr_sched():
    recipe = PROBES["mae"]
    args = SimpleNamespace(lr=6.4, min_lr=0.0, warmup_epochs=10, epochs=90)
    for epoch in [0, 0.25, 5, 9.99, 10, 10.5, 45.3, 89.99]:
        assert probe_learning_rate(recipe, epoch, lr=6.4, epochs=90) == pytest.approx(
            official_mae_adjust_learning_rate(epoch, args), rel=1e-12, abs=1e-15)


def test_moco_schedule_equals_main_lincls():
    recipe = PROBES["moco"]
    args = SimpleNamespace(lr=30.0, schedule=[60, 80])
    for step in range(100 * 4):
        epoch = step // 4  # main_lincls.py adjusts once per epoch
        assert probe_learning_rate(recipe, step / 4, lr=30.0, epochs=100) == pytest.approx(
            official_lincls_adjust_learning_rate(epoch, args), rel=1e-12)
    short = probe_with(recipe, epochs=10)  # a short run keeps the milestones' share
    assert short.milestones == (6.0, 8.0) and probe_with(recipe) == recipe


def test_emp_ssl_schedule_equals_cosine_annealing_lr_stepped_per_epoch():
    recipe = PROBES["emp_ssl"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.03)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100)
    for epoch in range(100):
        for i in range(3):
            assert probe_learning_rate(recipe, epoch + i / 3, lr=0.03, epochs=100) == pytest.approx(
                opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        scheduler.step()


@pytest.mark.parametrize("hw", [(375, 500), (32, 32), (224, 300)])
def test_mae_crop_equals_util_crop(hw):
    for seed in range(20):
        torch.manual_seed(seed)
        ours = mae_crop_params(*hw)
        torch.manual_seed(seed)
        assert ours == official_mae_get_params(hw, (0.08, 1.0), (3 / 4, 4 / 3))


def test_heads_as_the_official_scripts():
    from timm.layers import trunc_normal_

    torch.manual_seed(3)
    mae = probe_head(PROBES["mae"], 16, 5)
    torch.manual_seed(3)
    w = torch.nn.Linear(16, 5).weight.detach().clone()  # the head as built, then main_linprobe.py's re-init
    trunc_normal_(w, std=0.01)  # and the BN(affine=False, eps=1e-6) wrap
    assert torch.equal(mae[1].weight, w) and not mae[1].bias.any()
    assert isinstance(mae[0], torch.nn.BatchNorm1d) and not mae[0].affine and mae[0].eps == 1e-6
    moco = probe_head(PROBES["moco"], 2048, 1000, generator=torch.Generator().manual_seed(0))
    assert isinstance(moco, torch.nn.Linear) and not moco.bias.any()  # main_lincls.py: fc N(0, 0.01), bias 0
    assert moco.weight.std().item() == pytest.approx(0.01, rel=0.01)


@pytest.mark.parametrize("method,probe,extra", [("moco_v2", "moco", []), ("mae", "mae", ["--feature_pool", "cls"])])
def test_official_probe_through_the_script(tmp_path, cifar10, method, probe, extra):
    from conftest import REPO, run_pretrain, tiny_run

    out = tmp_path / method
    run_pretrain(tiny_run(out, cifar10, method=method, max_steps=1))
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--model", str(out), "--dataset", cifar10,
           "--protocol", "linear", "--linear_probe", probe, "--linear_epochs", "2", "--linear_batch_size", "32",
           "--knn_train_samples", "64", "--knn_test_samples", "64", "--num_workers", "0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    key = f"linear_{probe}"
    assert any(k.endswith(f"{key}_top1") for k in result), result
    assert result[f"{key}_official"] is False and result[f"{key}_epochs"] == 2
    assert result[f"{key}_source"] == PROBES[probe].source and result[f"{key}_train_samples"] == 64
    assert f"linear probe ({probe})" in proc.stderr  # the augmented training ran (its progress bar)
