#!/usr/bin/env python
"""Pretrain any hf_mixssl method: `accelerate launch scripts/pretrain.py --preset moco_v2_cifar ...`.

Thin on purpose: arguments are parsed and resolved by `hf_mixssl.arguments`, the loop lives in
`hf_mixssl.training`. `python scripts/pretrain.py --help` lists every flag.
"""

import json
import sys

from hf_mixssl.arguments import parse_args
from hf_mixssl.training import NonFiniteLossError, pretrain


def main(argv=None) -> int:
    try:
        args, extra = parse_args(argv)
        result = pretrain(args, extra)
    except (ValueError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 3
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
