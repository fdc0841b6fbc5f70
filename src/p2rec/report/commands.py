"""Stages 'collect', 'tables', 'plots' and 'calibrate': paper tables and figures from compact per-run results,
and the A/A calibration of the tables' test.

``gather`` (in commands.py) is what the workflow calls with the declared run files; these stages serve
runs made at different times or places: ``collect`` copies the compact files of every run into one
folder, ``tables --from`` rebuilds every table (and optionally the plots) from that folder alone.
"""
from __future__ import annotations

import json

from p2rec import P2RecError


def register(sub) -> None:
    p = sub.add_parser("collect", help="copy the compact per-run files (metrics, ranks, timing, config, history)")
    p.add_argument("--runs", required=True, help="folder of runs: {dataset}/{backbone}/{variant}/seed{seed}/")
    p.add_argument("--out", required=True, help="destination folder (same layout)")
    p.add_argument("--llm", default=None, help="also copy SFT timing files {dataset}/{variant}/timing.json from here")
    p.add_argument("--pretrain", default=None, help="also copy stage-0 timing files {dataset}/run/timing.json from here")
    p.set_defaults(func=_collect)

    p = sub.add_parser("tables", help="rebuild every table from a folder of collected runs")
    p.add_argument("--from", dest="source", required=True, help="folder written by 'collect' (or results/runs)")
    p.add_argument("--out", required=True, help="folder for the tables")
    p.add_argument("--config", default=None,
                   help="config file: grid (absent runs show as failed), order, report settings, LLM caption")
    p.add_argument("--plots", default=None, help="also draw the plots into this folder")
    p.set_defaults(func=_tables)

    p = sub.add_parser("plots", help="draw the figures (PNG + PDF)")
    p.add_argument("--metrics", nargs="*", default=[], help="metrics.json of each run")
    p.add_argument("--sft-timing", nargs="*", default=[], help="SFT timing files .../{dataset}/{variant}/timing.json")
    p.add_argument("--context", default=None, help="report context as JSON, or a config file")
    p.add_argument("--out-dir", required=True, help="{dataset}/scores.*, {dataset}/convergence.*, sft_efficiency.*")
    p.set_defaults(func=_plots)

    p = sub.add_parser("calibrate", help="false-positive rate (and power) of the user- and seed-level tests "
                                         "on runs of one method (docs/statistics.md)")
    p.add_argument("--runs", nargs="+", required=True, help="run folders (or metrics.json) of ONE method, many seeds")
    p.add_argument("--planted", nargs="*", default=[], help="run folders of a second method with the same seeds: power")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--metrics", nargs="+", default=["hr@10", "ndcg@10"], help="metrics (default hr@10 ndcg@10)")
    p.add_argument("--max-splits", type=int, default=1000,
                   help="use every balanced split of the seeds up to this many, else a seeded sample of this many")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled splits")
    p.add_argument("--out", required=True, help="output prefix: <prefix>.csv and <prefix>.md")
    p.set_defaults(func=_calibrate)


def _collect(args):
    from p2rec.report.runs import collect_runs

    n = collect_runs(args.runs, args.out, llm_dir=args.llm, pretrain_dir=args.pretrain)
    print(json.dumps({"runs": n, "out": args.out}))


def _tables(args):
    from p2rec.report.runs import find_runs, find_sft_timings, find_stage0_timings
    from p2rec.report.settings import read_context
    from p2rec.report.tables import build_tables

    context = read_context(args.config)
    paths = find_runs(args.source)
    timings = find_sft_timings(args.source)
    stage0 = find_stage0_timings(args.source)
    if not paths:
        raise P2RecError(f"{args.source}: no runs found (expected {{dataset}}/{{backbone}}/{{variant}}/seed{{seed}}/metrics.json)")
    if args.config:  # the config's grid decides: runs and SFT timings of other cells stay out of tables and plots
        paths, timings, stage0 = in_grid(paths, timings, context.get("grid", {}), stage0)
    written = build_tables(paths, args.out, context, sft_timings=timings, grid_filter=bool(args.config),
                           stage0_timings=stage0)
    if args.plots:
        _draw(paths, timings, context, args.plots)
    print(json.dumps({"runs": len(paths), "sft_timings": len(timings), "stage0_timings": len(stage0),
                      "written": sorted(map(str, written.values()))}))


def in_grid(run_paths, sft_timings, grid: dict, stage0_timings=()) -> tuple[list, list, list]:
    """Run files ``{dataset}/{backbone}/{variant}/seed{seed}/metrics.json``, SFT timing files
    ``llm/{dataset}/{variant}/*.json`` and stage-0 timing files ``pretrain/{dataset}/run/timing.json`` of the
    grid's cells only."""
    from pathlib import Path

    from p2rec.report.runs import run_key
    from p2rec.workflow.seeds import run_seeds

    datasets, variants = grid.get("datasets", []), grid.get("variants", [])

    def wanted(key: dict) -> bool:
        return key["seed"] in run_seeds(grid, key["dataset"], key["variant"]) and \
            all(key[k] in grid.get(f"{k}s", []) for k in ("dataset", "backbone", "variant"))

    runs = [p for p in run_paths if wanted(run_key(p))]
    timings = [t for t in sft_timings if Path(t).parts[-3] in datasets and Path(t).parts[-2] in variants]
    stage0 = [t for t in stage0_timings if Path(t).parts[-3] in datasets]
    return runs, timings, stage0


def _plots(args):
    from p2rec.report.settings import read_context

    if not args.metrics and not args.sft_timing:
        raise P2RecError("plots: give --metrics and/or --sft-timing")
    written = _draw(args.metrics, args.sft_timing, read_context(args.context), args.out_dir)
    print(json.dumps({"written": sorted(map(str, written))}))


def _draw(metrics, timings, context, out_dir):
    from pathlib import Path

    from p2rec.report.plots import dataset_plots, plot_sft_efficiency
    from p2rec.report.settings import report_settings

    settings = report_settings(context.get("report"))
    written = []
    if metrics:
        written += dataset_plots(metrics, out_dir, settings["plot_metric"], context.get("grid"),
                                 ends=(settings["baseline"], settings["treatment"]))
    if timings:
        written += plot_sft_efficiency(timings, Path(out_dir) / "sft_efficiency")
    return written


def _calibrate(args):
    from p2rec.report.calibration import calibrate, write_calibration

    if not 0 < args.alpha < 1:
        raise P2RecError(f"calibrate: --alpha must be between 0 and 1, got {args.alpha}")
    if args.max_splits < 1:
        raise P2RecError(f"calibrate: --max-splits must be at least 1, got {args.max_splits}")
    table = calibrate(args.runs, args.planted or None, alpha=args.alpha, metrics=args.metrics,
                      max_splits=args.max_splits, seed=args.seed)
    written = write_calibration(table, args.out)
    print(json.dumps({"written": sorted(map(str, written.values())),
                      "rates": {f"{r.metric} {r.test} {r.analysis}": None if r.rate != r.rate else r.rate
                                for r in table.itertuples()}}))
