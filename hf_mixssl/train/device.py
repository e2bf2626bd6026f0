"""What the training device can do well: native bf16 on CPUs, channels-last layout, ``torch.compile``, and a CPU
allocator that keeps the memory it frees.

bf16 autocast on a CPU without native bf16 instructions is a trap: PyTorch emulates the bf16 matmuls and
convolutions, and on an AVX2-only CPU a ResNet-18 training step (32 px, batch 64) took 39-43 s in bf16 against
3.4-6.1 s in fp32 side by side (about 10x slower; the first bf16 MoCo step of a real run took 98 s). CPUs with
AVX512-BF16 or AMX run it natively (2.2x faster than fp32 on the CIFAR-stem ResNet-18 there).
"""

from __future__ import annotations

import ctypes
import sys
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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS; ``False`` where the
    C library is not glibc.

    PyTorch allocates CPU tensors with ``malloc``. glibc serves blocks above its mmap threshold (adaptive, at most
    32 MiB) with fresh ``mmap`` pages and trims the heap top above twice that, so batch-sized temporaries fault in
    every page again at each use (the CUDA caching allocator exists to avoid the same cost on GPUs). Measured on
    this project's 2-core CPU, side by side: the batched device view ops of two 224 px views took 1.9 ms an image
    with glibc's defaults and 1.0-1.1 ms with these settings; a ResNet-18 training step ran 6% (32 px) and 17%
    (224 px) faster; the EMP-SSL benchmark step (2000 patches, bf16) 1.55x faster. The price is memory: freed
    blocks stay in the process and the heap fragments, so the resident size stays at its peak, and that peak grew
    from 6.4 to 9.2 GiB in the EMP-SSL benchmark. The trainer sets this on a CPU unless
    ``--no-retain_freed_memory``; it cannot be undone within the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # Thresholds above any tensor we make (mallopt takes a C int): no mmap per block, no trimming of the heap top.
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
