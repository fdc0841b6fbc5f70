"""Tables from per-run results. The run directory layout is runs/{dataset}/{backbone}/{variant}/seed{seed}/."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from p2rec.io import atomic_path, read_json, write_text


def run_key(metrics_path: str | Path) -> dict:
    parts = Path(metrics_path).parts
    dataset, backbone, variant, seed = parts[-5], parts[-4], parts[-3], parts[-2]
    return {"dataset": dataset, "backbone": backbone, "variant": variant, "seed": int(seed.removeprefix("seed"))}


def load_runs(metrics_paths) -> pd.DataFrame:
    rows = []
    for path in metrics_paths:
        metrics = read_json(path)
        row = run_key(path)
        row.update({f"{k}": v for k, v in metrics["test"].items()})
        row["best_epoch"] = metrics.get("best_epoch")
        rows.append(row)
    return pd.DataFrame(rows)


def gather_main_table(metrics_paths, out_md, out_csv, metrics=("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20")) -> pd.DataFrame:
    runs = load_runs(metrics_paths)
    keys = ["dataset", "backbone", "variant"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped[list(metrics)].agg(["mean", "std"])
    table.columns = [m if stat == "mean" else f"{m}_std" for m, stat in table.columns]
    table = table.reset_index()
    table.insert(3, "seeds", grouped.size().values)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
    shown = table[keys + ["seeds"]].copy()
    for m in metrics:
        shown[m] = [f"{mu:.4f} ± {sd:.4f}" if pd.notna(sd) else f"{mu:.4f}" for mu, sd in zip(table[m], table[f"{m}_std"])]
    write_text(out_md, shown.to_markdown(index=False) + "\n")
    return table
