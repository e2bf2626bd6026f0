#!/usr/bin/env python
"""Pretrain any hf_mixssl method: `accelerate launch scripts/pretrain.py --preset moco_v2_cifar ...`.

Thin on purpose: arguments are parsed and resolved by `hf_mixssl.arguments`, the loop lives in
`hf_mixssl.training`. `python scripts/pretrain.py --help` lists every flag.
"""

import json
import sys
from pathlib import Path

# scripts/ also holds evaluate.py, which would shadow the `evaluate` package (used for metrics) while this
# directory is sys.path[0]; drop it from the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from hf_mixssl.arguments import parse_args  # noqa: E402
from hf_mixssl.hub import PushError  # noqa: E402
from hf_mixssl.training import NonFiniteLossError, pretrain  # noqa: E402


def main(argv=None) -> int:
    try:
        args, extra = parse_args(argv)
        result = pretrain(args, extra)
    except (ValueError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 3
    except PushError as e:
        print(f"error: {e}. The run is complete and saved in {args.output_dir}; push it later with "
              f"scripts/push_to_hub.py.", file=sys.stderr)
        return 4
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
