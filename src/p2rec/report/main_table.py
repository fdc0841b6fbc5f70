"""The main table: dataset x backbone rows, one column per variant and metric (METHOD.md section 7).

Best per row and metric bold, runner-up underlined; a score whose difference from the baseline is
significant by the seed-level test after Holm within its family carries ``*``; a cell with a run made by
other code than the current checkout carries ``†``; failed runs are footnoted.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from p2rec.report.formatting import SIG_MARK, STALE_MARK, fmt, metric_label, one_line, tex_escape
from p2rec.report.runs import Grid
from p2rec.report.settings import SEED_TEST, table_metrics


def _places(values: dict[str, float], decimals: int) -> dict[str, int]:
    """1 for the best (ties share), 2 for the runner-up, compared at the printed precision."""
    shown = {v: round(x, decimals) for v, x in values.items()}
    distinct = sorted(set(shown.values()), reverse=True)
    out = {}
    for v, x in shown.items():
        if x == distinct[0]:
            out[v] = 1
        elif len(distinct) > 1 and x == distinct[1]:
            out[v] = 2
    return out


def main_table_data(grid: Grid, sig: pd.DataFrame, settings: dict,
                    stale_cells: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Long form of the main table (one row per dataset, backbone, variant, metric) and its footnotes.

    Marks come only from the seed-level test's rows of ``sig`` against the baseline: a within-pair (users)
    analysis or a one-seed effect never marks a score. ``stale_cells``: (dataset, backbone, variant) ->
    reasons, for the cells made by other code (see ``runs.stale_reason``)."""
    stale_cells = stale_cells or {}
    decimals = settings["decimals"]
    base, treat = settings["baseline"], settings["treatment"]
    marks = {}
    for r in sig.itertuples(index=False):
        if r.comparator == base and r.test == SEED_TEST:
            marks[(r.dataset, r.backbone, r.metric, r.treatment)] = (r.p_holm, bool(r.significant))
    rows, notes = [], []
    note_of: dict[tuple, int] = {}
    for d, b in grid.rows():
        for metric in table_metrics(settings):
            means = {}
            for v in grid.variants:
                cell = grid.cell(d, b, v)
                if cell is not None and cell.ok_runs:
                    means[v] = float(np.mean(list(cell.seed_scores(metric).values())))
            places = _places(means, decimals) if len(means) > 1 else {}  # nothing to rank with one score
            for v in grid.variants:
                cell = grid.cell(d, b, v)
                if cell is None:
                    continue
                scores = list(cell.seed_scores(metric).values())
                note = None
                if cell.failed:
                    if (d, b, v) not in note_of:
                        by_reason: dict[str, list[int]] = {}
                        for r in cell.failed:
                            by_reason.setdefault(one_line(r.reason), []).append(r.seed)
                        failed = "; ".join(f"seed{'s' if len(sd) > 1 else ''} {', '.join(map(str, sd))}: {why}"
                                           for why, sd in by_reason.items())
                        head = (f"{len(cell.failed)} of {len(cell.runs)} seeds failed, mean over the others"
                                if cell.ok_runs else "failed")
                        notes.append(f"{d} / {b} / {v}: {head} ({failed})")
                        note_of[(d, b, v)] = len(notes)
                    note = note_of[(d, b, v)]
                p_holm, significant = marks.get((d, b, metric, v), (math.nan, False))
                improvement = math.nan
                if v == treat and treat != base and treat in means and base in means and means[base]:
                    improvement = means[treat] / means[base] - 1.0
                rows.append({"dataset": d, "backbone": b, "variant": v, "metric": metric,
                             "mean": means.get(v, math.nan),
                             "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
                             "n_seeds": len(scores), "n_failed": len(cell.failed), "status": cell.status,
                             "place": places.get(v, 0), "p_holm_vs_baseline": p_holm,
                             "significant_vs_baseline": significant, "improvement_over_baseline": improvement,
                             "note": note or 0, "stale": "; ".join(stale_cells.get((d, b, v), []))})
    return pd.DataFrame(rows), notes


def _cell_text(row, kind: str, decimals: int) -> str:
    if row is None:
        return "--" if kind == "tex" else "—"
    if row["status"] == "failed":
        text = "failed"
    else:
        text = fmt(row["mean"], decimals)
        if kind == "md":
            text = f"**{text}**" if row["place"] == 1 else (f"<u>{text}</u>" if row["place"] == 2 else text)
        else:
            text = rf"\textbf{{{text}}}" if row["place"] == 1 else (rf"\underline{{{text}}}" if row["place"] == 2 else text)
        if row["significant_vs_baseline"]:
            text += SIG_MARK[kind]
        if row.get("stale"):
            text += STALE_MARK[kind]
    if row["note"]:
        text += f" [{row['note']}]" if kind == "md" else rf"\textsuperscript{{[{row['note']}]}}"
    return text


def _improvement_text(value: float, kind: str) -> str:
    if value is None or math.isnan(value):
        return "--" if kind == "tex" else "—"
    text = f"{value * 100:+.2f}%"
    return text.replace("%", r"\%") if kind == "tex" else text


def render_main(long: pd.DataFrame, notes: list[str], grid: Grid, settings: dict, caption: str) -> tuple[str, str]:
    """Markdown and LaTeX of the main table."""
    decimals = settings["decimals"]
    metrics = table_metrics(settings)
    variants = grid.variants
    show_impr = settings["treatment"] in variants and settings["baseline"] in variants and \
        settings["treatment"] != settings["baseline"]
    index = {(r["dataset"], r["backbone"], r["variant"], r["metric"]): r for r in long.to_dict("records")}
    per_metric = len(variants) + (1 if show_impr else 0)

    def impr(d, b, m):
        row = index.get((d, b, settings["treatment"], m))
        return row["improvement_over_baseline"] if row else math.nan

    # markdown
    head = ["Dataset", "Backbone"]
    for m in metrics:
        head += [f"{metric_label(m)} {v}" for v in variants] + ([f"{metric_label(m)} Improv."] if show_impr else [])
    lines = [f"Table: {caption}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for d, b in grid.rows():
        cells = [d, b]
        for m in metrics:
            cells += [_cell_text(index.get((d, b, v, m)), "md", decimals) for v in variants]
            if show_impr:
                cells.append(_improvement_text(impr(d, b, m), "md"))
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {one_line(n, 400)}  " for i, n in enumerate(notes, 1)]
    md = "\n".join(lines) + "\n"

    # LaTeX (base LaTeX only: no packages needed)
    spec = "ll" + "|".join(["r" * per_metric for _ in metrics])
    tex = [r"\begin{table}[t]", r"\centering", r"\small",
           rf"\caption{{{tex_escape(caption)}}}", r"\label{tab:main}", rf"\begin{{tabular}}{{{spec}}}", r"\hline"]
    tex.append(" & ".join(["", ""] + [rf"\multicolumn{{{per_metric}}}{{{'c|' if i < len(metrics) - 1 else 'c'}}}"
                                      rf"{{{tex_escape(metric_label(m))}}}" for i, m in enumerate(metrics)]) + r" \\")
    sub = ["Dataset", "Backbone"]
    for _ in metrics:
        sub += [tex_escape(v) for v in variants] + (["Improv."] if show_impr else [])
    tex += [" & ".join(sub) + r" \\", r"\hline"]
    previous = None
    for d, b in grid.rows():
        cells = [tex_escape(d) if d != previous else "", tex_escape(b)]
        if previous is not None and d != previous:
            tex.append(r"\hline")
        previous = d
        for m in metrics:
            cells += [_cell_text(index.get((d, b, v, m)), "tex", decimals) for v in variants]
            if show_impr:
                cells.append(_improvement_text(impr(d, b, m), "tex"))
        tex.append(" & ".join(cells) + r" \\")
    tex += [r"\hline", r"\end{tabular}"]
    if notes:
        tex.append(r"\par\smallskip\footnotesize")
        tex += [rf"{{[{i}]}} {tex_escape(one_line(n, 400))}\par" for i, n in enumerate(notes, 1)]
    tex.append(r"\end{table}")
    return md, "\n".join(tex) + "\n"
