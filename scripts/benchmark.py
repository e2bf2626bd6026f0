#!/usr/bin/env python
"""Throughput benchmark: `python scripts/benchmark.py [--suite moco|mixing|automix|mae|emp_ssl|all] [--backbone resnet18 ...]`; the code is hf_mixssl/cli/benchmark.py."""
from hf_mixssl.cli import run_script; run_script("benchmark")  # noqa: E702
