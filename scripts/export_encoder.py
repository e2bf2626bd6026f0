#!/usr/bin/env python
"""Export a saved run's encoder in timm's Hub format: `python scripts/export_encoder.py RUN_DIR [--output DIR]`; the code is hf_mixssl/cli/export.py."""
from hf_mixssl.cli import run_script; run_script("export")  # noqa: E702
