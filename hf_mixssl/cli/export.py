"""Export a saved run's encoder in timm's Hub format: `python scripts/export_encoder.py RUN_DIR [--output DIR]`.

Runs do this at the end by default (`<run>/encoder`); this script does it for any saved hf_mixssl model. The
result loads with `timm.create_model("local-dir:DIR", pretrained=True)` (or `hf-hub:` once pushed) and
transformers' `AutoModel` (TimmWrapperModel), with no hf_mixssl installed.
"""

import argparse
import sys
from pathlib import Path



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a saved hf_mixssl model directory")
    p.add_argument("--output", default=None, help="default: RUN_DIR/encoder")
    args = p.parse_args(argv)
    import hf_mixssl  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel

    from hf_mixssl.sharing.hub import export_model_encoder

    try:
        model = AutoModel.from_pretrained(args.run_dir)
        out = export_model_encoder(model, args.output or Path(args.run_dir) / "encoder")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is None:
        print(f"error: {args.run_dir} has a CIFAR-stem backbone, which timm cannot rebuild from its config; use "
              f"AutoModel.from_pretrained(...).get_encoder() instead", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
