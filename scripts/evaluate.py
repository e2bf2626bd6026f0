#!/usr/bin/env python
"""Evaluate a pretrained hf_mixssl model: `python scripts/evaluate.py --model runs/moco --protocol knn linear`; the code is hf_mixssl/cli/evaluate.py."""
from hf_mixssl.cli import run_script; run_script("evaluate")  # noqa: E702
