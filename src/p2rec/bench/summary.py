"""Summary of one dataset x backbone P2Rec experiment from the workflow's files: per-seed metrics, paired
t-tests over users, stage timings and category-parsing agreement.

Reads results/runs/{dataset}/{backbone}/{variant}/seed*/ (metrics.json, ranks.csv.gz, timing.json),
results/pretrain/{dataset}/run/timing.json, results/llm/{dataset}/{sft}/{timing,extract_timing,parse_eval}.json.
Writes into --out:
  {dataset}_{backbone}{tag}.csv         variant, seed, hr@10, ndcg@10, best_epoch, epochs, seconds_per_epoch
  {dataset}_{backbone}_tests.csv        treatment, comparator, metric, means, relative effect, p-value
  {dataset}_timings.json                stage-0, SFT and extraction wall times, SFT samples and tokens/s
  categories.csv                        dataset, comparison, ari, nmi, items (rows of other datasets kept)

The t-test is two-sided and paired over test users, on each user's metric averaged over the seeds both
variants share (p2rec.report.stats.compare_users, as in the workflow's tables); per-seed tests are listed too.

    python -m p2rec bench summary --dataset beauty --backbone sasrec --out results/p2rec
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from p2rec import P2RecError
from p2rec.report.stats import compare_users, user_means_over_seeds
from p2rec.report.tables import find_runs, load_runs

METRICS = ["hr@10", "ndcg@10"]


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run(args) -> dict:
    res, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = [r for r in load_runs(find_runs(res / "runs"))
            if (r.dataset, r.backbone) == (args.dataset, args.backbone) and r.variant in args.variants
            and r.status == "ok"]
    if not runs:
        raise P2RecError(f"no finished runs under {res / 'runs' / args.dataset / args.backbone}")
    rows = []
    for r in sorted(runs, key=lambda r: (args.variants.index(r.variant), r.seed)):
        timing = r.timing()
        rows.append({"variant": r.variant, "seed": r.seed, **{m: r.metrics["test"][m] for m in METRICS},
                     "best_epoch": r.metrics.get("best_epoch"), "epochs": r.metrics.get("epochs"),
                     "seconds_per_epoch": timing.get("seconds_per_epoch"), "device": timing.get("device")})
    per_seed = pd.DataFrame(rows)
    stem = f"{args.dataset}_{args.backbone}{args.tag}"
    per_seed.to_csv(out / f"{stem}.csv", index=False, float_format="%.6g")

    ranks = {v: {r.seed: r.ranks() for r in runs if r.variant == v} for v in args.variants}
    tests = []
    for comparator in [v for v in args.variants if v != args.treatment]:
        seeds = sorted(set(ranks[args.treatment]) & set(ranks[comparator]))
        if not seeds:
            continue
        for metric in METRICS:
            for label, chosen in [("mean over seeds", seeds)] + [(f"seed {s}", [s]) for s in seeds]:
                t = user_means_over_seeds({s: ranks[args.treatment][s] for s in chosen}, metric)
                c = user_means_over_seeds({s: ranks[comparator][s] for s in chosen}, metric)
                result = compare_users(t, c, "ttest")
                tests.append({"treatment": args.treatment, "comparator": comparator, "metric": metric,
                              "seeds": label, "mean_treatment": result["mean_treatment"],
                              "mean_comparator": result["mean_comparator"], "relative_effect": result["effect"],
                              "t": result["statistic"], "p_value": result["p_raw"], "n_users": result["n_users"]})
    tests = pd.DataFrame(tests)
    tests.to_csv(out / f"{stem}_tests.csv", index=False, float_format="%.6g")

    llm = res / "llm" / args.dataset / args.sft
    stage0, sft, extract = read(res / "pretrain" / args.dataset / "run" / "timing.json"), read(llm / "timing.json"), \
        read(llm / "extract_timing.json")
    timings = {
        "stage0_pretrain_s": stage0.get("total_seconds"), "stage0_epochs": stage0.get("epochs"),
        "sft_wall_s": sft.get("wall_s"), "sft_train_s": sft.get("train_s"), "sft_samples": sft.get("samples"),
        "sft_users": sft.get("users"), "sft_tokens": sft.get("tokens"), "sft_tokens_per_s": sft.get("tokens_per_s"),
        "sft_peak_memory_mb": sft.get("peak_memory_mb"), "sft_device": sft.get("device"), "sft_dtype": sft.get("dtype"),
        "sft_torch_threads": sft.get("torch_threads"), "sft_history": sft.get("history"),
        "extract_wall_s": extract.get("wall_s"), "extract_items": extract.get("items"),
        "extract_tokens_per_s": extract.get("tokens_per_s"), "model": sft.get("model"),
    }
    (out / f"{args.dataset}{args.tag}_timings.json").write_text(json.dumps(timings, indent=1) + "\n")

    parse = read(llm / "parse_eval.json")
    cat_path = out / "categories.csv"
    old = pd.read_csv(cat_path) if cat_path.exists() else pd.DataFrame()
    label = args.sft + args.tag
    new = pd.DataFrame([{"dataset": args.dataset, "variant": label, **row} for row in parse.get("rows", [])])
    if not old.empty:
        old = old[~((old["dataset"] == args.dataset) & (old["variant"] == label))]
    cats = pd.concat([old, new], ignore_index=True)
    if not cats.empty:
        cats = cats[["dataset", "variant", "comparison", "ari", "nmi", "items"]].sort_values(["dataset", "variant"])
        cats.to_csv(cat_path, index=False, float_format="%.6g")

    summary = per_seed.groupby("variant", sort=False)[METRICS].agg(["mean", "std"])
    print(summary.to_string(float_format=lambda x: f"{x:.4f}"))
    if not tests.empty:
        print(tests.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(json.dumps({k: v for k, v in timings.items() if k != "sft_history"}, indent=1))
    if not cats.empty:
        print(cats.to_string(index=False))
    return {"per_seed": per_seed, "tests": tests, "timings": timings, "categories": cats}
