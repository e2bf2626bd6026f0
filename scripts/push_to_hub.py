#!/usr/bin/env python
"""Share a run on the Hub: `python scripts/push_to_hub.py RUN_DIR --repo-id org/name [--private] [--revision]`; the code is hf_mixssl/cli/push.py."""
from hf_mixssl.cli import run_script; run_script("push")  # noqa: E702
