"""Command-line entry points: ``hf-mixssl-pretrain``, ``-evaluate``, ``-push``, ``-export``, ``-benchmark``.

Each module has a ``main(argv=None) -> int``; ``scripts/*.py`` in the repository are one-line wrappers around
:func:`run_script`, and ``python -m hf_mixssl.cli.<name>`` works too (``accelerate launch -m ...``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def run_script(name: str) -> None:
    """Run ``hf_mixssl.cli.<name>.main()`` as a script and exit with its status.

    ``scripts/`` holds ``evaluate.py``, which would shadow the ``evaluate`` package (used for metrics) while that
    directory is ``sys.path[0]``; it is dropped from the import path first.
    """
    here = Path(sys.argv[0]).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(importlib.import_module(f"hf_mixssl.cli.{name}").main())
