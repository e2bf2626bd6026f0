"""Share a run on the Hub: `python scripts/push_to_hub.py RUN_DIR --repo-id org/name [--private] [--revision]`.

Creates the repo if needed and uploads, with `HfApi`, exactly what loading needs: config, weights, the modeling
code for `trust_remote_code=True`, a model card rendered from the run's results, `eval_results.json` and
`training_args.json`. `--encoder-repo-id` also pushes the exported timm encoder (`RUN_DIR/encoder`). Transient
errors are retried; on failure the reason is printed (exit code 4) and the run directory is left untouched.
"""

import argparse
import json
import sys



def main(argv=None) -> int:
    from hf_mixssl.sharing.hub import PushError, push_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by scripts/pretrain.py")
    p.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="org/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--encoder-repo-id", "--encoder_repo_id", dest="encoder_repo_id", default=None,
                   help="also push RUN_DIR/encoder (timm format) to this repo")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    args = p.parse_args(argv)
    try:
        urls = push_run(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                        token=args.token, encoder_repo_id=args.encoder_repo_id)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PushError as e:
        print(f"error: {e}. The local run {args.run_dir} is unchanged.", file=sys.stderr)
        return 4
    print(json.dumps(urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
