"""Evaluate a pretrained hf_mixssl model: `python scripts/evaluate.py --model runs/moco --protocol knn linear`.

Protocols: `knn` (weighted kNN, k 200, T 0.1), `linear` (a frozen encoder and a linear probe: `--linear_probe quick`
on cached features, or the official `moco` / `mae` probes with augmented views, or EMP-SSL's `emp_ssl`; see
`hf_mixssl.evaluation.probes`) and `finetune` (the whole encoder + a new linear head, SGD, cosine). `--random_init`
evaluates the same architecture with fresh weights (the baseline every SSL result is compared with). Results are printed as JSON and merged into `<model>/eval_results.json` (or
`--output_file`); keys carry the feature choice, e.g. `backbone_knn_top1`, `cls_linear_top1`.
"""

import argparse
import json
import sys
from pathlib import Path


import torch

from hf_mixssl.evaluation.probes import PROBES, probe_key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="run directory (or a local save_pretrained directory)")
    p.add_argument("--dataset", default="../shared/datasets/cifar10", help="load_dataset path or Hub id")
    p.add_argument("--dataset_config", default=None)
    p.add_argument("--protocol", nargs="+", default=["knn"], choices=["knn", "linear", "finetune"],
                   help="evaluation protocol(s)")
    p.add_argument("--train_split", default="train")
    p.add_argument("--eval_split", default=None, help="default: test or validation")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--eval_features", default=None,
                   help="override the model config's feature choice (MoCo: backbone | projection; EMP-SSL: "
                        "pre_feature | backbone); the config validates it")
    p.add_argument("--feature_pool", default=None, help="MAE: class token or mean token (cls | mean)")
    p.add_argument("--knn_k", type=int, default=200)
    p.add_argument("--knn_t", type=float, default=0.1)
    p.add_argument("--knn_train_samples", type=int, default=None)
    p.add_argument("--knn_test_samples", type=int, default=None)
    p.add_argument("--linear_probe", default="quick", choices=sorted(PROBES),
                   help="quick: BN + Linear on cached features (100 ep, SGD 0.1, B 256); moco: main_lincls.py (crop + "
                        "flip, SGD 30, x0.1 at 60/80, 100 ep, B 256); mae: main_linprobe.py (BN + Linear, LARS "
                        "0.1 x B/256, 90 ep, B 16384); emp_ssl: EMP-SSL's func.py linear (cached, SGD 0.03, wd 5e-5, "
                        "B 100)")
    p.add_argument("--linear_epochs", type=int, default=None,
                   help="default: the probe's (a shorter run keeps its milestones' and warmup's share)")
    p.add_argument("--linear_lr", type=float, default=None, help="default: the probe's (base lr for mae)")
    p.add_argument("--linear_batch_size", type=int, default=None, help="default: the probe's")
    p.add_argument("--linear_weight_decay", type=float, default=None, help="default: the probe's")
    p.add_argument("--finetune_epochs", type=int, default=10)
    p.add_argument("--finetune_lr", type=float, default=0.01)
    p.add_argument("--finetune_batch_size", type=int, default=128)
    p.add_argument("--finetune_weight_decay", type=float, default=5e-4)
    p.add_argument("--finetune_train_samples", type=int, default=None, help="cap the fine-tuning set")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--random_init", action="store_true", help="same architecture, untrained weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for feature extraction")
    p.add_argument("--output_file", default=None, help="default: <model>/eval_results.json (not with --random_init)")
    return p


def main(argv=None) -> int:
    import hf_mixssl  # noqa: F401  (registers the Auto classes)
    from transformers import AutoConfig, AutoModel

    from hf_mixssl.evaluation.probes import linear_probe, probe_with
    from hf_mixssl.evaluation.protocols import EvalData, finetune_evaluate, knn_evaluate

    args = build_parser().parse_args(argv)
    try:
        config = AutoConfig.from_pretrained(args.model)
        overrides = {f: getattr(args, f) for f in ("eval_features", "feature_pool") if getattr(args, f) is not None}
        for field in overrides:
            if not hasattr(config, field):
                raise ValueError(f"--{field} does not apply to {args.model} ({config.model_type})")
        if overrides:  # rebuilt through the config class, which validates the values
            config = type(config).from_dict({**config.to_dict(), **overrides})
        if args.random_init:
            torch.manual_seed(args.seed)
            model = AutoModel.from_config(config)
        else:
            model = AutoModel.from_pretrained(args.model, config=config)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        data = EvalData(args.dataset, args.dataset_config, args.image_column, args.label_column,
                        batch_size=args.batch_size, num_workers=args.num_workers, device=device,
                        autocast_dtype=torch.bfloat16 if args.bf16 else None, progress=True,
                        reuse=True)
        result = {}
        if "knn" in args.protocol:
            result.update(knn_evaluate(model, data, train_split=args.train_split, eval_split=args.eval_split,
                                       train_samples=args.knn_train_samples, test_samples=args.knn_test_samples,
                                       knn_k=args.knn_k, knn_t=args.knn_t))
        if "linear" in args.protocol:
            recipe = probe_with(PROBES[args.linear_probe], epochs=args.linear_epochs, lr=args.linear_lr,
                                batch_size=args.linear_batch_size, weight_decay=args.linear_weight_decay)
            result.update(linear_probe(model, data, recipe=recipe, train_split=args.train_split,
                                       eval_split=args.eval_split, train_samples=args.knn_train_samples,
                                       test_samples=args.knn_test_samples, seed=args.seed))
        if "finetune" in args.protocol:
            result.update(finetune_evaluate(
                model, data, train_split=args.train_split, eval_split=args.eval_split,
                train_samples=args.finetune_train_samples, test_samples=args.knn_test_samples,
                epochs=args.finetune_epochs, batch_size=args.finetune_batch_size, lr=args.finetune_lr,
                weight_decay=args.finetune_weight_decay, seed=args.seed))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    features = getattr(config, "eval_features", None) or getattr(config, "feature_pool", None)
    prefix = ("random_init_" if args.random_init else "") + (f"{features}_" if features else "")
    scores = ("knn_top1", "finetune_top1", "finetune_top5") + tuple(
        f"{probe_key(name)}_top{k}" for name in PROBES for k in (1, 5))
    result = {prefix + k if k in scores else k: v for k, v in result.items()}
    print(json.dumps(result))
    output = args.output_file or (None if args.random_init else str(Path(args.model) / "eval_results.json"))
    if output:
        path = Path(output)
        previous = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**previous, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
