#!/usr/bin/env python
"""Pretrain any hf_mixssl method: `accelerate launch scripts/pretrain.py --preset moco_v2_cifar ...`; the code is hf_mixssl/cli/pretrain.py."""
from hf_mixssl.cli import run_script; run_script("pretrain")  # noqa: E702
