"""The foundation stages: prepare, train, gather, check-config."""
from __future__ import annotations

import json
import sys

from p2rec.cli import bool_arg, json_arg


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
    p.add_argument("--provenance", type=json_arg, default=None,
                   help="the run's lineage (JSON from p2rec.workflow.experiment.run_lineage): written to provenance.json")
    p.add_argument("--restore-from", default=None, action="append",
                   help="a published run folder (repeatable; the first match wins): when its provenance has the same lineage, copy it instead of training")
    p.add_argument("--record-failure", nargs="?", const="true", default="false", type=bool_arg, metavar="BOOL",
                   help="on any error write a failed result (metrics.json status 'failed' + reason, empty "
                        "placeholders for the other run files) and exit 0, so the tables show 'failed' "
                        "(bare flag = true; the workflow passes report.record_failures)")
    p.set_defaults(func=_train)

    p = sub.add_parser("gather", help="build the paper tables from the declared runs' files")
    p.add_argument("--metrics", nargs="+", required=True,
                   help="metrics.json of each run (its ranks.csv.gz, timing.json, config.json lie beside it)")
    p.add_argument("--sft-timing", nargs="*", default=[], help="LLM timing files .../{dataset}/{variant}/timing.json (SFT) and extract_timing.json")
    p.add_argument("--stage0-timing", nargs="*", default=[], help="stage-0 timing files .../{dataset}/run/timing.json")
    p.add_argument("--context", default=None,
                   help="report context as JSON (grid order, eval protocol, report settings, llm) or a config file")
    p.add_argument("--out-dir", required=True, help="folder for main.{md,csv,tex}, significance.csv, ...")
    p.set_defaults(func=_gather)

    p = sub.add_parser("check-config", help="validate a config file and print it with defaults filled")
    p.add_argument("config")
    p.set_defaults(func=_check_config)


def _prepare(args):
    from p2rec.data.prepare import prepare_dataset

    stats = prepare_dataset(args.name, args.entry, args.data_dir, args.raw_dir, args.out_dir)
    print(json.dumps({k: stats[k] for k in ("users", "items", "interactions")}))


def _train(args):
    from p2rec.training.runner import run_training
    from p2rec.workflow.experiment import run_job

    run_job(args.out_dir, args.seed, args.provenance, args.restore_from, args.record_failure,
            lambda: run_training(args.data, args.settings, args.seed, args.out_dir, item_init=args.item_init,
                                 save_item_table=args.save_item_table, progress=not args.no_progress))
    return 0


def _gather(args):
    from p2rec.report.tables import build_tables, read_context

    written = build_tables(args.metrics, args.out_dir, read_context(args.context), sft_timings=args.sft_timing,
                           stage0_timings=args.stage0_timing)
    print(json.dumps({"runs": len(args.metrics), "written": sorted(str(p) for p in written.values())}))


def _check_config(args):
    import yaml

    from p2rec import P2RecError
    from p2rec.workflow.config import validate_config
    from p2rec.workflow.names import check_names

    try:
        with open(args.config, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as err:
        raise P2RecError(f"{args.config}: {err}") from None
    check_names(raw)  # as the Snakefile does
    json.dump(validate_config(raw), sys.stdout, indent=2)
    print()
