"""One MLP builder for projectors, predictors and classifiers, plus SplitBatchNorm.

Method heads quote their paper spec and call :func:`build_mlp`, e.g. MoCo v2's projector
``build_mlp([d, d, 128], norm=False)`` and MoCo v3's ``build_mlp([d, 4096, 256], last_norm=True,
last_norm_affine=False, bias=False)`` (``_build_mlp`` in the official ``moco-v3/moco/builder.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def build_mlp(
    dims: Sequence[int],
    *,
    norm: bool = False,
    bias: bool = True,
    last_norm: bool = False,
    last_norm_affine: bool = True,
) -> nn.Sequential:
    """MLP ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Hidden layers are ``Linear -> [BatchNorm1d] -> ReLU``; the last layer is ``Linear`` followed, when
    ``last_norm``, by ``BatchNorm1d(affine=last_norm_affine)``. ``bias`` applies to every Linear
    followed by a norm (a bias before BN is redundant); the last Linear keeps ``bias and not last_norm``.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output dims, got {list(dims)}")
    if any(d <= 0 for d in dims):
        raise ValueError(f"MLP dims must be positive, got {list(dims)}")
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias and not norm))
        if norm:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=bias and not last_norm))
    if last_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_norm_affine))
    return nn.Sequential(*layers)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises ``num_splits`` interleaved sub-batches separately in training.

    Simulates multi-GPU BatchNorm on one device (MoCo CIFAR Colab): with splits ``s`` the batch
    ``[N, C, H, W]`` is viewed as ``[N/s, C*s, H, W]``, so sample ``i`` is normalised with the samples
    ``j ≡ i (mod s)``. Running statistics are the mean over splits; evaluation is plain BatchNorm.
    Same parameters and buffers as ``BatchNorm2d``, so state dicts load into a plain timm model.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or self.num_splits == 1 or n % self.num_splits != 0:
            return super().forward(x)
        s = self.num_splits
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = nn.functional.batch_norm(
            x.reshape(-1, c * s, h, w), mean_split, var_split, weight, bias, True, self.momentum, self.eps
        ).view(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
            self.running_var.copy_(var_split.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every exact ``nn.BatchNorm2d`` in ``module`` by a :class:`SplitBatchNorm` (in place)."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm(
                child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                affine=child.affine, track_running_stats=child.track_running_stats,
            ).to(device=child.weight.device if child.weight is not None else None)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module


def revert_split_bn(module: nn.Module) -> nn.Module:
    """Turn every :class:`SplitBatchNorm` back into a plain ``nn.BatchNorm2d`` (in place)."""
    for m in module.modules():
        if isinstance(m, SplitBatchNorm):
            m.__class__ = nn.BatchNorm2d  # same parameters and buffers: only the forward differs
            del m.num_splits
    return module
