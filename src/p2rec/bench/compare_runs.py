"""Two sets of runs of one cell compared user by user: did a setting change the scores?

Each set is a folder of ``seed<N>/`` run folders (``ranks.csv.gz`` and ``metrics.json`` inside), for
example a workflow cell ``results/runs/beauty/sasrec/none`` against the same cell rerun with another
setting. Per metric: each user's score averaged over the seeds, the two-sided paired t-test over users,
the relative difference with its seeded bootstrap 95% interval, and the seed-level paired test; the same
statistics as the paper tables (p2rec.report.stats).

    python -m p2rec bench compare-runs --treatment experiments/bf16/runs/beauty/sasrec/none \\
        --comparator results/runs/beauty/sasrec/none --seeds 1 2 3 --out results/reproduction/bf16_beauty_sasrec

writes ``<out>.csv`` and ``<out>.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from p2rec import P2RecError
from p2rec.io import command_line, markdown_rows, write_table_files
from p2rec.report.stats import compare_seeds, compare_users, user_means_over_seeds

COLUMNS = ["metric", "treatment", "comparator", "effect", "ci_low", "ci_high", "p_users", "n_users",
           "p_seeds", "n_seeds", "best_epochs_treatment", "best_epochs_comparator"]


def load(folder: str, seeds: list[int]) -> tuple[dict[int, pd.Series], dict[int, dict]]:
    """Ranks (indexed by user) and metrics.json of every seed; a missing or failed run is an error."""
    ranks, metrics = {}, {}
    for seed in seeds:
        run = Path(folder) / f"seed{seed}"
        for name in ("metrics.json", "ranks.csv.gz"):
            if not (run / name).exists():
                raise P2RecError(f"{run / name}: missing")
        metrics[seed] = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        if metrics[seed].get("status", "ok") != "ok":
            raise P2RecError(f"{run / 'metrics.json'}: the run failed ({metrics[seed].get('error', 'no reason')})")
        ranks[seed] = pd.read_csv(run / "ranks.csv.gz", index_col="user")["rank"]
    return ranks, metrics


def compare(args: argparse.Namespace) -> list[dict]:
    t_ranks, t_metrics = load(args.treatment, args.seeds)
    c_ranks, c_metrics = load(args.comparator, args.seeds)
    rows = []
    for metric in args.metrics:
        users = compare_users(user_means_over_seeds(t_ranks, metric), user_means_over_seeds(c_ranks, metric))
        seeds = compare_seeds({s: m["test"][metric] for s, m in t_metrics.items()},
                              {s: m["test"][metric] for s, m in c_metrics.items()})
        rows.append({"metric": metric, "treatment": round(users["mean_treatment"], 4),
                     "comparator": round(users["mean_comparator"], 4), "effect": f"{users['effect']:+.2%}",
                     "ci_low": f"{users['ci_low']:+.2%}", "ci_high": f"{users['ci_high']:+.2%}",
                     "p_users": f"{users['p_raw']:.3g}", "n_users": users["n_users"],
                     "p_seeds": f"{seeds['p_raw']:.3g}", "n_seeds": seeds["n_seeds"],
                     "best_epochs_treatment": " ".join(str(t_metrics[s]["best_epoch"]) for s in args.seeds),
                     "best_epochs_comparator": " ".join(str(c_metrics[s]["best_epoch"]) for s in args.seeds)})
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    rows = compare(args)
    md = "\n".join([
        f"# `{args.treatment}` (treatment) against `{args.comparator}` (comparator)", "",
        f"Test scores; seeds {', '.join(map(str, args.seeds))}. Per user: the metric averaged over seeds; p_users: "
        f"two-sided paired t-test over users; effect: relative difference of the means with its bootstrap 95% "
        f"interval (2,000 resamples, seed 0); p_seeds: paired t-test over the per-seed scores.", "",
        *markdown_rows(rows, COLUMNS), "",
        f"Command: `{command_line(args.argv)}`", ""])
    write_table_files(args.out, rows, COLUMNS, md)
    print(md)
    return rows
