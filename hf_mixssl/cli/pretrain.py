"""Pretrain any hf_mixssl method: `accelerate launch scripts/pretrain.py --preset moco_v2_cifar ...`
(or `hf-mixssl-pretrain ...`, `accelerate launch -m hf_mixssl.cli.pretrain ...`).

Thin on purpose: arguments are parsed and resolved by `hf_mixssl.train.arguments`, the loop lives in
`hf_mixssl.train.loop`. `--help` lists the shared flags and every method's settings; `--method M --help`
only M's.
"""

from __future__ import annotations

import json
import sys

from hf_mixssl.sharing.hub import PushError
from hf_mixssl.train.arguments import parse_args
from hf_mixssl.train.loop import CheckpointError, NonFiniteLossError, pretrain


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = parse_args(argv)
        result = pretrain(args)
    except (ValueError, NonFiniteLossError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return {ValueError: 2, NonFiniteLossError: 3}.get(type(e), 5)
    except PushError as e:
        print(f"error: {e}. The run is complete and saved in {args.output_dir}; push it later with "
              f"hf-mixssl-push (scripts/push_to_hub.py).", file=sys.stderr)
        return 4
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
