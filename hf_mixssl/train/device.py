"""What the training device can do well: native bf16 on CPUs, channels-last layout, ``torch.compile``.

bf16 autocast on a CPU without native bf16 instructions is a trap: PyTorch emulates the bf16 matmuls and
convolutions, and on an AVX2-only CPU a ResNet-18 training step (32 px, batch 64) took 39-43 s in bf16 against
3.4-6.1 s in fp32 side by side (about 10x slower; the first bf16 MoCo step of a real run took 98 s). CPUs with
AVX512-BF16 or AMX run it natively (2.2x faster than fp32 on the CIFAR-stem ResNet-18 there).
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of this CPU (empty where ``/proc/cpuinfo`` is not readable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether bf16 matmuls/convolutions run natively on this CPU (AVX512-BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` or views ``[B, V, C, H, W]`` with channels last in memory; each view ``x[:, v]``
    is then a channels-last ``[B, C, H, W]`` as the model sees it. Values are unchanged."""
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)  # memory [V, B, H, W, C]
    return x


def bf16_cpu_warning(*, device_type: str, mixed_precision: str, flags: set[str] | None = None) -> str | None:
    """The warning to log when bf16 autocast would run emulated on this CPU, else ``None``."""
    if device_type != "cpu" or mixed_precision != "bf16" or cpu_has_native_bf16(flags):
        return None
    return ("bf16 autocast on a CPU without native bf16 (no AVX512-BF16 or AMX in its flags): PyTorch emulates "
            "it, and on an AVX2 CPU a ResNet-18 training step ran about 10x slower in bf16 than in fp32 (39-43 s "
            "against 3.4-6.1 s, measured side by side). Train in fp32 here: `accelerate launch "
            "--mixed_precision no ...`.")
