"""Publish a saved HyWIA checkpoint on the Hugging Face Hub, with its model card.

The token comes from the usual places (`HF_TOKEN`, or `hf auth login`) and is never printed. `--dry-run` refreshes
the card and lists what would be uploaded, without network access.

    .venv/bin/python examples/push_to_hub.py outputs/smollm2-hywia-20 your-name/smollm2-hywia-20 --private
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import ModelCard

from optimum_hywia.model_card import push_checkpoint_to_hub, write_model_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a folder written by HyWIAPruner.save_pretrained or `hywia prune`")
    parser.add_argument("repo_id", help="the Hub repo to create or update, e.g. your-name/model-hywia-20")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--dry-run", action="store_true", help="show what would be uploaded; no network")
    args = parser.parse_args()

    folder = Path(args.folder)
    if args.dry_run:
        card = ModelCard.load(write_model_card(folder, name=args.repo_id))
        print(f"Would upload to {args.repo_id} ({'private' if args.private else 'public'}):")
        for path in sorted(folder.iterdir()):
            print(f"  {path.name:<28} {path.stat().st_size:>12,} bytes")
        print(f"Card metadata: {card.data.to_dict()}")
        return
    url = push_checkpoint_to_hub(folder, args.repo_id, private=args.private)
    print(f"Uploaded {folder} to https://huggingface.co/{args.repo_id} ({url})")


if __name__ == "__main__":
    main()
