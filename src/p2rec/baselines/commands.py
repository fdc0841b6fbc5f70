"""Baselines in the CLI: text-embed (the text_init variant's item embeddings; `p2rec reduce` makes the table)."""
from __future__ import annotations

import json

from p2rec.cli import json_arg


def register(sub) -> None:
    p = sub.add_parser("text-embed", help="embed every item's text with a sentence encoder (text_init baseline)")
    p.add_argument("--items", required=True, help="prepared items.tsv (item_id<TAB>text)")
    p.add_argument("--stats", required=True, help="stats.json of the dataset (the number of items)")
    p.add_argument("--settings", type=json_arg, required=True, help="text_init settings (JSON: encoder, max_length, normalize)")
    p.add_argument("--out", required=True, help=".npy [num_items + 1, hidden], row 0 zeros")
    p.add_argument("--timing", default=None, help="write a JSON summary (encoder, items, seconds) here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_text_embed)


def _text_embed(args):
    from p2rec import P2RecError
    from p2rec.baselines.text_init import text_embeddings
    from p2rec.io import read_json

    try:
        num_items = int(read_json(args.stats)["items"])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise P2RecError(f"{args.stats}: cannot read the number of items ({err})") from None
    info = text_embeddings(args.items, num_items, args.settings, args.out, args.timing, batch_size=args.batch_size,
                           threads=args.threads, device=args.device)
    print(json.dumps(info))
