"""The LLM stages of the CLI: convert-llm, categories, sft, extract, reduce, parse-eval."""
from __future__ import annotations

import json
from pathlib import Path

from p2rec.cli import json_arg


def register(sub) -> None:
    p = sub.add_parser("convert-llm", help="convert the packaged SmolLM2 GGUF model once into a safetensors folder")
    p.add_argument("--out", required=True, help="folder to write (reused if it already holds a converted model)")
    p.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    p.set_defaults(func=_convert)

    p = sub.add_parser("categories", help="k-means latent categories of the stage-0 item table and g_u per user")
    p.add_argument("--data", required=True, help="prepared sequences.txt (only the training split is read)")
    p.add_argument("--item-table", required=True, help="stage-0 item table .npy [num_items+1, d]")
    p.add_argument("--settings", type=json_arg, required=True, help="categories settings (JSON)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_categories)

    p = sub.add_parser("sft", help="LoRA fine-tuning: user-level (P2Rec) or instance-level")
    p.add_argument("--mode", choices=["user", "instance"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--item-table", required=True)
    p.add_argument("--categories", required=True)
    p.add_argument("--g-u", default=None, help="g_u.npy (user mode)")
    p.add_argument("--items", default=None, help="items file (item_id<TAB>text): the item texts of the prompt modes "
                                                 "soft+text and text")
    p.add_argument("--model", required=True, help="hub id or folder of a causal LM")
    p.add_argument("--settings", type=json_arg, required=True, help="SFT settings (JSON)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--checkpoint-every", type=int, default=100, help="optimiser steps between checkpoints")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sft)

    p = sub.add_parser("extract", help="every item alone through the fine-tuned LLM: hidden states, parsed categories")
    p.add_argument("--adapter", required=True, help="adapter folder written by sft")
    p.add_argument("--item-table", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--settings", type=json_arg, required=True, help="extract settings (JSON)")
    p.add_argument("--items", default=None, help="items file: needed where the fine-tuning's prompt mode showed "
                                                 "item texts (the same file)")
    p.add_argument("--out-hidden", required=True)
    p.add_argument("--out-parsed", required=True)
    p.add_argument("--out-timing", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_extract)

    p = sub.add_parser("reduce", help="PCA item embeddings to a backbone hidden size at its init scale")
    p.add_argument("--input", required=True, help=".npy [num_items+1, d]")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=json_arg, required=True, help="reduce settings (JSON: hidden, init_std)")
    p.add_argument("--stats", default=None, help="stats.json of the dataset (checks the number of items)")
    p.add_argument("--info", default=None, help="write a JSON summary here")
    p.set_defaults(func=_reduce)

    p = sub.add_parser("parse-eval", help="ARI/NMI of parsed vs k-means vs ground-truth categories")
    p.add_argument("--categories", required=True, help="k-means categories.npy")
    p.add_argument("--parsed", required=True, help="parsed_categories.npy")
    p.add_argument("--truth", default=None, help="truth.tsv (item,category)")
    p.add_argument("--out", required=True)
    p.add_argument("--label", default="", help="recorded with the result (e.g. dataset/variant)")
    p.set_defaults(func=_parse_eval)

    p = sub.add_parser("parse-table", help="collect parse-eval results into one CSV (dataset, variant, comparison, ari, nmi)")
    p.add_argument("--inputs", nargs="+", required=True, help="parse_eval.json files results/llm/{dataset}/{variant}/...")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_parse_table)


def _convert(args):
    from p2rec.llm.loading import convert_packaged

    print(convert_packaged(args.out, force=args.force))


def _categories(args):
    from p2rec.data.sequences import read_sequences
    from p2rec.data.split import leave_one_out
    from p2rec.io import atomic_path, save_npy, write_json
    from p2rec.llm.categories import kmeans_categories, load_item_table, prior_preferences

    s = args.settings
    data = read_sequences(args.data)
    split = leave_one_out(data)
    table = load_item_table(args.item_table, data.num_items, "stage-0 item table")
    cats, summary = kmeans_categories(table, s["k"], s["kmeans_seed"], s["kmeans_restarts"])
    g_u = prior_preferences(split.train, cats, s["k"], s["max_items"])
    out = Path(args.out_dir)
    save_npy(out / "categories.npy", cats)
    save_npy(out / "g_u.npy", g_u)
    with atomic_path(out / "users.txt") as tmp:
        tmp.write_text("".join(f"{u}\n" for u in split.users), encoding="utf-8")
    write_json(out / "categories.json", {**summary, "users": int(len(split.users)), "max_items": s["max_items"],
                                         "g_u_rows": "users in the order of sequences.txt (users.txt)"})
    print(json.dumps({"k": s["k"], "inertia": summary["inertia"], "empty": summary["empty"]}))


def _sft(args):
    from p2rec.llm.budget import plan_sft
    from p2rec.llm.sft import run_sft

    settings = plan_sft(args.mode, args.data, args.settings)  # the default budget resolved; a large cost logged
    timing = run_sft(args.mode, args.data, args.item_table, args.categories, args.model, settings, args.out_dir,
                     g_u_path=args.g_u, checkpoint_every=args.checkpoint_every, threads=args.threads,
                     progress=not args.no_progress, items_path=args.items)
    print(json.dumps({k: timing[k] for k in ("samples", "tokens", "train_s", "tokens_per_s", "extrapolated")}))


def _extract(args):
    from p2rec.llm.budget import log_extract_estimate
    from p2rec.llm.extract import extract_items

    log_extract_estimate(args.item_table, args.settings)
    timing = extract_items(args.adapter, args.item_table, args.model, args.settings, args.out_hidden, args.out_parsed,
                           args.out_timing, batch_size=args.batch_size, threads=args.threads,
                           progress=not args.no_progress, items_path=args.items)
    print(json.dumps({k: timing[k] for k in ("items", "tokens", "extract_s", "tokens_per_s")}))


def _reduce(args):
    from p2rec import P2RecError
    from p2rec.io import read_json
    from p2rec.llm.reduce import reduce_file

    num_items = None
    if args.stats:
        try:
            num_items = int(read_json(args.stats)["items"])
        except (OSError, KeyError, ValueError) as err:
            raise P2RecError(f"{args.stats}: cannot read the number of items ({err})") from None
    info = reduce_file(args.input, args.out, int(args.settings["hidden"]), float(args.settings["init_std"]),
                       num_items=num_items, info_path=args.info)
    print(json.dumps(info))


def _parse_eval(args):
    from p2rec.io import write_json
    from p2rec.llm.categories import load_categories, parse_evaluation, read_truth

    kmeans = load_categories(args.categories)
    parsed = load_categories(args.parsed, len(kmeans) - 1)
    truth = read_truth(args.truth) if args.truth else None
    result = parse_evaluation(kmeans, parsed, truth)
    result["label"] = args.label
    write_json(args.out, result)
    print(json.dumps({r["comparison"]: round(r["ari"], 4) for r in result["rows"]}))


def _parse_table(args):
    from p2rec.io import read_json, write_text

    lines = ["dataset,variant,comparison,items,ari,nmi"]
    for path in args.inputs:
        result = read_json(path)
        dataset, _, variant = result.get("label", "").partition("/")
        for row in result["rows"]:
            lines.append(f"{dataset},{variant},{row['comparison']},{row['items']},{row['ari']:.6f},{row['nmi']:.6f}")
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"{len(lines) - 1} rows -> {args.out}")
