"""Item side information in the CLI: prepare-items, attribute-eval."""
from __future__ import annotations

import json

from p2rec.cli import json_arg


def register(sub) -> None:
    p = sub.add_parser("prepare-items", help="a dataset's item text (items.tsv) and attribute categories, from its catalog entry")
    p.add_argument("--name", required=True, help="dataset name (catalog key)")
    p.add_argument("--entry", type=json_arg, required=True, help="the item keys of the catalog entry and its source (JSON)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--raw-dir", default="raw", help="folder of the original source files (amazon-metadata reads there)")
    p.add_argument("--prepared", required=True, help="the dataset's prepared folder (stats.json, truth.tsv, item_map.csv, sequences.txt)")
    p.add_argument("--out-items", required=True)
    p.add_argument("--out-categories", required=True)
    p.set_defaults(func=_prepare_items)

    p = sub.add_parser("attribute-eval", help="ARI/NMI of k-means and parsed categories against the real item categories")
    p.add_argument("--categories", required=True, help="k-means categories.npy")
    p.add_argument("--parsed", required=True, help="parsed_categories.npy")
    p.add_argument("--item-categories", required=True, help="item_categories.csv (item,category)")
    p.add_argument("--label", default="", help="dataset/variant")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_attribute_eval)


def _prepare_items(args):
    from p2rec.data.item_sources import prepare_items

    info = prepare_items(args.name, args.entry, args.data_dir, args.prepared, args.out_items, args.out_categories,
                         raw_dir=args.raw_dir)
    print(json.dumps(info))


def _attribute_eval(args):
    from p2rec.io import write_json
    from p2rec.llm.attribute_eval import evaluate_files

    result = evaluate_files(args.categories, args.parsed, args.item_categories)
    result["label"] = args.label
    write_json(args.out, result)
    print(json.dumps({r["comparison"]: round(r["ari"], 4) for r in result["rows"]}))
