"""The foundation stages: prepare, train, gather, check-config."""
from __future__ import annotations

import json
import sys

from p2rec.cli import json_arg


def register(sub) -> None:
    p = sub.add_parser("prepare", help="prepare a dataset from its catalog entry")
    p.add_argument("--name", required=True)
    p.add_argument("--entry", type=json_arg, required=True, help="the catalog entry (JSON)")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--raw-dir", default="raw")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="train and evaluate one backbone run")
    p.add_argument("--data", required=True, help="prepared sequences.txt")
    p.add_argument("--settings", type=json_arg, required=True, help="resolved settings (JSON)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--item-init", default=None, help=".npy item table [num_items+1, hidden]")
    p.add_argument("--save-item-table", default=None, help="write the trained item table here (.npy)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("gather", help="collect run metrics into the main table (markdown + CSV)")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of each run")
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-csv", required=True)
    p.set_defaults(func=_gather)

    p = sub.add_parser("check-config", help="validate a config file and print it with defaults filled")
    p.add_argument("config")
    p.set_defaults(func=_check_config)


def _prepare(args):
    from p2rec.prepare import prepare_dataset

    stats = prepare_dataset(args.name, args.entry, args.data_dir, args.raw_dir, args.out_dir)
    print(json.dumps({k: stats[k] for k in ("users", "items", "interactions")}))


def _train(args):
    from p2rec.runner import run_training

    metrics = run_training(args.data, args.settings, args.seed, args.out_dir, item_init=args.item_init,
                           save_item_table=args.save_item_table, progress=not args.no_progress)
    print(json.dumps({"test": metrics["test"], "best_epoch": metrics["best_epoch"]}))


def _gather(args):
    from p2rec.tables import gather_main_table

    gather_main_table(args.metrics, args.out_md, args.out_csv)


def _check_config(args):
    import yaml

    from p2rec import P2RecError
    from p2rec.config import validate_config

    try:
        with open(args.config, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as err:
        raise P2RecError(f"{args.config}: {err}") from None
    json.dump(validate_config(raw), sys.stdout, indent=2)
    print()
