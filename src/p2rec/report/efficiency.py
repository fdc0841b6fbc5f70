"""The efficiency tables: downstream training per run, LLM fine-tuning per dataset and variant, and the
wall time of every stage per dataset (docs/tables.md, "Efficiency")."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from p2rec import P2RecError
from p2rec.report.runs import EXTRACT_TIMING, Grid, read_json_or_empty


RUN_TIMING_KEYS = [("epochs", "epochs"), ("best_epoch", "best epoch"), ("seconds_per_epoch", "s/epoch"),
                   ("eval_seconds_per_pass", "eval s/pass"), ("train_seconds", "train s"),
                   ("test_eval_seconds", "test eval s"), ("total_seconds", "total s")]
SFT_TIMING_KEYS = [("prompt_mode", "prompt"), ("samples", "samples"), ("tokens", "tokens"),
                   ("tokens_per_sample", "tokens/sample"), ("train_s", "train s"), ("wall_s", "wall s"),
                   ("tokens_per_s", "tokens/s"), ("s_per_sample", "s/sample"),
                   ("epoch_samples", "epoch samples"), ("epoch_tokens", "epoch tokens"),
                   ("epoch_wall_s", "epoch wall s"), ("extrapolated", "extrapolated"),
                   ("extract_s", "extraction s"), ("peak_memory_mb", "peak MB"), ("device", "device")]


def sft_timing_record(path: str | os.PathLike) -> dict:
    """One SFT timing file (.../{dataset}/{variant}/timing.json) as a flat record.

    Measured values (samples, tokens, train_s, tokens_per_s, s_per_sample) come from the top level; the
    cost of one full epoch from ``full_epoch`` when present (samples, tokens, wall_s, extrapolated), else
    from the top level (the measurement was a full epoch)."""
    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: SFT timing file not found")
    data = read_json_or_empty(path)
    record = {"dataset": path.parts[-3], "variant": path.parts[-2],
              **{k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None}}
    seconds = data.get("train_s", data.get("wall_s"))
    if "s_per_sample" not in record and isinstance(seconds, (int, float)) and data.get("samples"):
        record["s_per_sample"] = seconds / data["samples"]
    if "tokens_per_sample" not in record and isinstance(data.get("tokens"), (int, float)) and data.get("samples"):
        record["tokens_per_sample"] = data["tokens"] / data["samples"]
    if "prompt_mode" not in record and isinstance(data.get("prompt"), dict) and data["prompt"].get("mode"):
        record["prompt_mode"] = data["prompt"]["mode"]  # timing files written before prompt_mode was recorded
    full = data.get("full_epoch") if isinstance(data.get("full_epoch"), dict) else {}
    record["epoch_samples"] = full.get("samples", data.get("samples"))
    record["epoch_tokens"] = full.get("tokens", data.get("tokens"))
    record["epoch_wall_s"] = full.get("wall_s", data.get("wall_s"))
    record["extrapolated"] = bool(full.get("extrapolated", data.get("extrapolated", False)))
    for key in ("peak_memory_mb", "peak_mem_mb", "peak_gpu_memory_mb", "peak_rss_mb"):
        if key in data:
            record["peak_memory_mb"] = data[key]
            break
    return record


def sft_timing_records(paths) -> list[dict]:
    """SFT timing files, each joined with the extraction timing (extract_timing.json, its ``extract_s``) of
    the same dataset and variant when that file is among ``paths``."""
    paths = [Path(p) for p in paths]
    extract = {}
    for p in paths:
        if p.name == EXTRACT_TIMING:
            data = read_json_or_empty(p) if p.exists() else {}
            if not p.exists():
                raise P2RecError(f"{p}: extraction timing file not found")
            extract[(p.parts[-3], p.parts[-2])] = (data.get("extract_s", data.get("wall_s")),
                                                   data.get("wall_s", data.get("extract_s")))
    records = [sft_timing_record(p) for p in paths if p.name != EXTRACT_TIMING]
    for r in records:
        if (r["dataset"], r["variant"]) in extract:
            r["extract_s"], r["extract_wall_s"] = extract[(r["dataset"], r["variant"])]
    return records


def stage0_seconds(paths) -> dict[str, float]:
    """Total seconds of each dataset's stage-0 run from its timing file (.../{dataset}/run/timing.json)."""
    out = {}
    for p in map(Path, paths):
        if not p.exists():
            raise P2RecError(f"{p}: stage-0 timing file not found")
        seconds = read_json_or_empty(p).get("total_seconds")
        if isinstance(seconds, (int, float)):
            out[p.parts[-3]] = float(seconds)
    return out


def wall_time_table(grid: Grid, sft: pd.DataFrame, stage0_timings=()) -> pd.DataFrame:
    """Per dataset, the measured time of every stage of the grid, summed: stage 0, the SFT jobs (wall
    seconds), the extractions (wall seconds) and the successful backbone runs (seconds inside the trainer)."""
    stage0 = stage0_seconds(stage0_timings)
    rows = []
    for dataset in dict.fromkeys(d for d, _ in grid.rows()):
        runs = [r for (d, _, _), cell in grid.cells.items() if d == dataset for r in cell.ok_runs]
        run_s = [r.timing().get("total_seconds") for r in runs]
        run_s = [x for x in run_s if isinstance(x, (int, float))]
        row = {"dataset": dataset, "stage0_s": stage0.get(dataset), "sft_jobs": 0, "sft_s": None,
               "extraction_s": None, "runs": len(run_s), "runs_s": float(sum(run_s)) if run_s else None}
        if len(sft) and "dataset" in sft.columns:
            mine = sft[sft["dataset"] == dataset]
            wall = _first_number(mine, "wall_s", "train_s").dropna()  # a job's wall time, else its training time
            ext = _first_number(mine, "extract_wall_s").dropna()
            row.update(sft_jobs=len(wall), sft_s=float(wall.sum()) if len(wall) else None,
                       extraction_s=float(ext.sum()) if len(ext) else None)
        row["total_s"] = sum(row[k] for k in ("stage0_s", "sft_s", "extraction_s", "runs_s") if row[k] is not None)
        row["total_h"] = row["total_s"] / 3600
        rows.append(row)
    return pd.DataFrame(rows)


def _first_number(frame: pd.DataFrame, *columns: str) -> pd.Series:
    """Row by row, the first of ``columns`` that holds a number (NaN where none does or none exists)."""
    out = pd.Series(np.nan, index=frame.index)
    for column in columns:
        if column in frame.columns:
            out = out.fillna(pd.to_numeric(frame[column], errors="coerce"))
    return out


def efficiency_tables(grid: Grid, sft_timings=(), stage0_timings=()) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Downstream (per dataset, backbone, variant: means over seeds), SFT (per dataset, variant) and wall-time
    (per dataset: every stage summed) tables."""
    rows = []
    for (d, b, v), cell in grid.cells.items():
        timings = [r.timing() for r in cell.ok_runs]
        if not timings:
            continue
        row = {"dataset": d, "backbone": b, "variant": v, "seeds": len(timings)}
        for key, _ in RUN_TIMING_KEYS:
            vals = [t[key] for t in timings if isinstance(t.get(key), (int, float))]
            if vals:
                row[key] = float(np.mean(vals))
        row["device"] = ", ".join(sorted({str(t.get("gpu") or t.get("device", "?")) for t in timings}))
        rows.append(row)
    order = {(d, b, v): i for i, (d, b, v) in enumerate((d, b, v) for d, b in grid.rows() for v in grid.variants)}
    run_table = pd.DataFrame(sorted(rows, key=lambda r: order.get((r["dataset"], r["backbone"], r["variant"]), 0)))
    sft = pd.DataFrame(sft_timing_records(sft_timings))
    return run_table, sft, wall_time_table(grid, sft, stage0_timings)


WALL_TIME_COLUMNS = [("stage0_s", "stage 0 s"), ("sft_jobs", "SFT jobs"), ("sft_s", "SFT s"),
                     ("extraction_s", "extraction s"), ("runs", "backbone runs"), ("runs_s", "backbone runs s"),
                     ("total_s", "total s"), ("total_h", "total h")]


# with pipeline seeds the workflow hands the tables the first seed's stage records (targets.report_pipeline)
PIPELINE_SEEDS_NOTE = ("With pipeline seeds every run seed has its own stage 0, categories, SFT and extraction; "
                       "the stage records here are the first seed's, and the other seeds' stages ran as well.")


def render_wall_time(wall: pd.DataFrame, pipeline_seeds: bool = False) -> str:
    shown = wall[["dataset"]].copy()
    for key, label in WALL_TIME_COLUMNS:
        shown[label] = wall[key].map(lambda x: "" if x is None or pd.isna(x) else
                                     (f"{x:.1f}" if key == "total_h" else f"{int(round(x)):,}"))
    return "\n".join([
        "## Wall time per dataset", "",
        "Table: Measured time of every stage of this table's grid, per dataset, summed: stage 0 (the collaborative "
        "recommender), the SFT jobs and the embedding extractions (wall seconds of each job) and the successful "
        "backbone runs (seconds inside the trainer). Total = their sum: the time of one worker running the jobs "
        "one after the other (jobs that ran at once overlapped in wall-clock time); the k-means and PCA steps "
        "(seconds each) are not included. Empty = no timing file given for that stage."
        + (f" {PIPELINE_SEEDS_NOTE} So the total counts stage 0, the SFT and the extraction once, not once per "
           "seed." if pipeline_seeds else ""), "",
        shown.to_markdown(index=False)])


def render_efficiency(run_table: pd.DataFrame, sft: pd.DataFrame, treatment: str = "p2rec",
                      wall: pd.DataFrame | None = None, pipeline_seeds: bool = False) -> str:
    parts = ["## Downstream training", "",
             "Table: Backbone training per run, means over seeds (seconds measured inside the trainer; "
             "s/epoch = training time per epoch without evaluation).", ""]
    if len(run_table):
        keys = [(k, label) for k, label in RUN_TIMING_KEYS if k in run_table.columns]
        shown = run_table[["dataset", "backbone", "variant", "seeds"]].copy()
        for k, label in keys:
            shown[label] = run_table[k].map(lambda x: "" if pd.isna(x) else (f"{x:.0f}" if "epoch" in k and "per" not in k
                                                                               else f"{x:.2f}"))
        shown["device"] = run_table["device"]
        parts.append(shown.to_markdown(index=False))
    else:
        parts.append("(no successful runs)")
    if len(sft):
        parts += ["", "## LLM fine-tuning (SFT)", "",
                  "Table: SFT cost per dataset and variant, from the SFT timing files: prompt (the prompt mode), "
                  "samples, tokens, tokens/sample, train s (optimiser steps), wall s (the whole job), tokens/s and "
                  "s/sample as measured; epoch columns = the cost of one full epoch (extrapolated "
                  f"from the measured throughput where marked); x {treatment} = epoch wall time relative to "
                  f"'{treatment}' on the same dataset." + (f" {PIPELINE_SEEDS_NOTE}" if pipeline_seeds else ""), ""]
        cols = [(k, label) for k, label in SFT_TIMING_KEYS if k in sft.columns]
        shown = sft[["dataset", "variant"]].copy()
        for k, label in cols:
            shown[label] = sft[k].map(_fmt_any)
        if "epoch_wall_s" in sft.columns:
            ref = {r["dataset"]: r["epoch_wall_s"] for r in sft.to_dict("records") if r["variant"] == treatment}
            shown[f"x {treatment}"] = [
                f"{w / ref[d]:.1f}x" if ref.get(d) and isinstance(w, (int, float)) and not pd.isna(w) else ""
                for d, w in zip(sft["dataset"], sft["epoch_wall_s"])]
        parts.append(shown.to_markdown(index=False))
    if wall is not None and len(wall):
        parts += ["", render_wall_time(wall, pipeline_seeds)]
    return "\n".join(parts) + "\n"


def _fmt_any(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else (f"{x:.3g}" if abs(x) < 0.01 else f"{x:.2f}")
    return str(x)
