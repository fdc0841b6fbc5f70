"""Paper tables from per-run files (METHOD.md section 7): the driver, and the names callers import.

The work is done in the modules beside this one:
  runs.py          run folders, failure records, collect, the grid of cells
  settings.py      the ``report`` settings and the context from a configuration
  significance.py  the comparisons: seed-level test, families and Holm, verdict and robustness tables
  main_table.py    the main table
  efficiency.py    the efficiency tables
  captions.py      captions (protocol, seeds, test, LLM)
  formatting.py    number formats, escaping, markdown / LaTeX / CSV writers
  files.py         the names of the tables and plots it writes
  calibration.py   the A/A calibration of the tests (``python -m p2rec calibrate``)

Outputs (``build_tables``) in one folder:
  main.{md,csv,tex}        dataset x backbone rows, one column per variant and metric, best bold, runner-up
                           underlined, ``*`` = significant vs the baseline by the seed-level test (Holm within
                           each family), ``†`` = made by code other than the current checkout, relative
                           improvement treatment/baseline
  significance.csv         every comparison of the families by ``report.test``
  verdict.{md,csv,tex}     per dataset x backbone: effect vs the baseline and vs the control with interval, p,
                           Holm decision, minimum detectable effect and seeds (always the seed-level test)
  robustness.{md,csv,tex}  seed-level paired tests against the baseline, Holm across the table
  efficiency.{md,csv}      downstream training time per run, plus SFT timing files when given

A failed run (metrics.json with status "failed") or a missing one shows as "failed" in its cell with the
reason in a footnote; a variant with some failed seeds shows the mean over the others, footnoted.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from p2rec import P2RecError
from p2rec.io import write_text
from p2rec.report.captions import llm_text, main_caption, protocol_text, seeds_text, test_text
from p2rec.report.efficiency import (efficiency_tables, render_efficiency, sft_timing_record,
                                     sft_timing_records, stage0_seconds, wall_time_table)
from p2rec.report.formatting import SIG_MARK, STALE_MARK, render_simple, rst_escape, tex_escape, write_csv
from p2rec.report.main_table import main_table_data, render_main
from p2rec.report.runs import (EXTRACT_TIMING, RUN_FILES, Cell, Grid, Run, build_grid, collect_runs,
                               find_runs, find_sft_timings, find_stage0_timings, load_run, load_runs, run_key,
                               stale_reason, write_failed_run, write_gzip_text)
from p2rec.report.settings import read_context, report_context, report_settings, table_metrics
from p2rec.report.significance import (SIGNIFICANCE_COLUMNS, comparisons, render_robustness,
                                       render_verdicts, robustness_table, significance_table, stale_cells_of,
                                       verdict_table)
from p2rec.report.files import PLOT_KINDS, TABLE_FILES, VERDICT_FILES


# what callers import from here (rules/report.smk, p2rec.commands, bench scripts, tests)
__all__ = ["llm_text", "main_caption", "protocol_text", "seeds_text", "test_text", "efficiency_tables",
           "render_efficiency", "sft_timing_record", "sft_timing_records", "stage0_seconds", "wall_time_table",
           "SIG_MARK", "STALE_MARK", "render_simple", "rst_escape", "tex_escape", "write_csv", "main_table_data",
           "render_main", "EXTRACT_TIMING", "RUN_FILES", "Cell", "Grid", "Run", "build_grid", "collect_runs",
           "find_runs", "find_sft_timings", "find_stage0_timings", "load_run", "load_runs", "run_key",
           "stale_reason", "write_failed_run", "write_gzip_text", "read_context", "report_context",
           "report_settings", "table_metrics", "SIGNIFICANCE_COLUMNS", "comparisons", "render_robustness",
           "render_verdicts", "robustness_table", "significance_table", "stale_cells_of", "verdict_table",
           "PLOT_KINDS", "TABLE_FILES", "VERDICT_FILES", "build_tables"]


def build_tables(metrics_paths, out_dir: str | os.PathLike, context: dict | None = None, sft_timings=(),
                 grid_filter: bool = False, stage0_timings=(), staleness=stale_reason) -> dict[str, Path]:
    """Build every table from the runs' metrics.json paths into ``out_dir``; returns the written files.

    ``context`` (see ``report_context``) gives the report settings, the grid order and the LLM for the
    caption; without it the schema defaults apply. With ``grid_filter`` the context's grid also decides
    which runs are expected (absent ones render as failed) and which found ones are left out.
    ``staleness``: Run -> reason its numbers may come from other code ('' when current); cells with such a
    run get ``†`` and the caption says so.
    """
    context = dict(context or {})
    context["report"] = settings = report_settings(context.get("report"))
    context.setdefault("grid", {})
    context.setdefault("llm", {})
    runs = load_runs(metrics_paths)
    if not runs and not grid_filter:
        raise P2RecError("no runs given: nothing to tabulate")
    grid = build_grid(runs, context["grid"], expect=grid_filter, ends=(settings["baseline"], settings["treatment"]))
    if not grid.cells:
        raise P2RecError("no runs match the configured grid: nothing to tabulate")
    out = Path(out_dir)
    stale = stale_cells_of(grid, staleness)
    verdicts = verdict_table(grid, settings, stale)
    sig = significance_table(grid, settings, stale, verdicts=verdicts)
    rob = robustness_table(grid, settings)
    evals = [r.config().get("eval", {}) for r in grid.ok_runs()]
    seeds = grid.seeds_by_dataset()
    largest = int(sig["family_size"].max()) if len(sig) else None
    caption = main_caption(context, seeds=seeds, evals=evals or None, n_comparisons=largest,
                           variants=grid.variants, stale=bool(stale))
    long, notes = main_table_data(grid, sig, settings, stale)
    md, tex = render_main(long, notes, grid, settings, caption)
    long = long.assign(note=[notes[n - 1] if n else "" for n in long["note"]])
    write_text(out / "main.md", md)
    write_text(out / "main.tex", tex)
    write_csv(long, out / "main.csv")
    write_csv(sig, out / "significance.csv")
    ver_md, ver_tex = render_verdicts(verdicts, grid, settings, stale=bool(stale))
    write_text(out / "verdict.md", ver_md)
    write_text(out / "verdict.tex", ver_tex)
    write_csv(verdicts, out / "verdict.csv")
    rob_md, rob_tex = render_robustness(rob, settings, seeds)
    write_text(out / "robustness.md", rob_md)
    write_text(out / "robustness.tex", rob_tex)
    write_csv(rob, out / "robustness.csv")
    run_eff, sft_eff, wall = efficiency_tables(grid, sft_timings, stage0_timings)
    write_text(out / "efficiency.md", render_efficiency(run_eff, sft_eff, settings["treatment"], wall,
                                                         pipeline_seeds=bool(context.get("pipeline_seeds"))))
    parts = [run_eff.assign(stage="train")] + ([sft_eff.assign(stage="sft")] if len(sft_eff) else []) \
        + ([wall.assign(stage="total")] if len(wall) else [])
    write_csv(pd.concat(parts, ignore_index=True), out / "efficiency.csv")
    return {name: out / name for name in TABLE_FILES}
