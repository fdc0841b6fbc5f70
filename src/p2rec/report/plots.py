"""Figures (matplotlib, Agg backend), each written as PNG and PDF:

- ``plot_scores``: per dataset, a test metric (NDCG@10 by default) by backbone and variant with 95% intervals
  (t interval over test users of the seed-averaged per-user metric);
- ``plot_convergence``: per dataset, the validation metric per epoch from each run's history.csv;
- ``plot_sft_efficiency``: the cost of one SFT epoch (wall time, samples, tokens) per dataset and variant
  (log scale), from SFT timing files; extrapolated wall times are hatched. Only what exists is drawn.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from p2rec import P2RecError  # noqa: E402
from p2rec.io import atomic_path  # noqa: E402
from p2rec.report.stats import mean_interval  # noqa: E402
from p2rec.report.efficiency import sft_timing_records  # noqa: E402
from p2rec.report.runs import Grid, build_grid, load_runs  # noqa: E402

FORMATS = ("png", "pdf")


def _label(metric: str) -> str:
    name, k = metric.split("@")
    return {"hr": "HR", "ndcg": "NDCG"}.get(name, name.upper()) + "@" + k


def save_figure(fig, base: str | os.PathLike) -> list[Path]:
    """Write ``base``.png and ``base``.pdf atomically (fixed metadata so reruns give stable PDFs)."""
    out = []
    for fmt in FORMATS:
        path = Path(f"{base}.{fmt}")
        meta = {"Software": None} if fmt == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
        with atomic_path(path, suffix="." + fmt) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out


def _colors(n: int):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_scores(grid: Grid, dataset: str, metric: str, base: str | os.PathLike) -> list[Path]:
    """Grouped bars: x = backbone, one bar per variant, 95% interval over test users."""
    backbones = [b for d, b in grid.rows() if d == dataset]
    variants = grid.variants
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.5 * len(backbones) * max(1, len(variants))), 3.2),
                           layout="constrained")
    width = 0.8 / max(1, len(variants))
    for j, (variant, color) in enumerate(zip(variants, _colors(len(variants)))):
        xs, means, lows, highs = [], [], [], []
        for i, backbone in enumerate(backbones):
            x = i - 0.4 + width * (j + 0.5)
            cell = grid.cell(dataset, backbone, variant)
            if cell is None:
                continue
            if not cell.ok_runs:
                ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color=color)
                continue
            values = cell.user_means(metric).to_numpy()
            low, high = mean_interval(values)
            xs.append(x)
            means.append(values.mean())
            lows.append(values.mean() - low if not math.isnan(low) else 0.0)
            highs.append(high - values.mean() if not math.isnan(high) else 0.0)
        if xs:
            ax.bar(xs, means, width=width * 0.95, color=color, label=variant,
                   yerr=np.array([lows, highs]), capsize=2, error_kw={"elinewidth": 0.8})
        else:
            ax.bar([], [], color=color, label=variant)
    ax.set_xticks(range(len(backbones)))
    ax.set_xticklabels(backbones)
    ax.set_ylabel(f"test {_label(metric)}")
    ax.set_title(f"{dataset}: test {_label(metric)} (95% interval over users)", fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, max(1, len(variants))), frameon=False)
    ax.set_ylim(bottom=0)
    return save_figure(fig, base)


def plot_convergence(grid: Grid, dataset: str, metric: str, base: str | os.PathLike) -> list[Path]:
    """Validation metric per epoch: one panel per backbone, one colour per variant, one line per seed."""
    backbones = [b for d, b in grid.rows() if d == dataset]
    n = max(1, len(backbones))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1.0, 2.8), squeeze=False, sharey=True, layout="constrained")
    column = f"valid_{metric}"
    for ax, backbone in zip(axes[0], backbones):
        for variant, color in zip(grid.variants, _colors(len(grid.variants))):
            cell = grid.cell(dataset, backbone, variant)
            labelled = False
            for run in cell.ok_runs if cell else []:
                hist = run.history()
                if column not in hist.columns or "epoch" not in hist.columns:
                    continue
                ax.plot(hist["epoch"], hist[column], color=color, lw=1, alpha=0.85,
                        label=None if labelled else variant)
                labelled = True
        ax.set_title(backbone, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel(f"validation {_label(metric)}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper", frameon=False)
    fig.suptitle(f"{dataset}: convergence (one line per seed)", fontsize=9)
    return save_figure(fig, base)


def plot_sft_efficiency(timing_paths, base: str | os.PathLike) -> list[Path]:
    """One SFT epoch's wall time, samples and tokens by dataset and variant, log scale; extrapolated times hatched."""
    records = sft_timing_records(timing_paths)
    if not records:
        raise P2RecError("no SFT timing files given: nothing to plot")
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    variants = list(dict.fromkeys(r["variant"] for r in records))
    panels = [(k, label) for k, label in (("epoch_wall_s", "wall time per epoch (s)"),
                                           ("epoch_samples", "samples per epoch"),
                                           ("epoch_tokens", "tokens per epoch"))
              if any(isinstance(r.get(k), (int, float)) and r.get(k) > 0 for r in records)]
    if not panels:
        raise P2RecError("SFT timing files hold none of wall_s, samples, tokens: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 1.0, 3.0), squeeze=False,
                             layout="constrained")
    width = 0.8 / len(variants)
    by_key = {(r["dataset"], r["variant"]): r for r in records}
    for ax, (key, label) in zip(axes[0], panels):
        for j, (variant, color) in enumerate(zip(variants, _colors(len(variants)))):
            for i, dataset in enumerate(datasets):
                r = by_key.get((dataset, variant))
                value = r.get(key) if r else None
                if not isinstance(value, (int, float)) or value <= 0:
                    continue
                bars = ax.bar(i - 0.4 + width * (j + 0.5), value, width=width * 0.95, color=color,
                              hatch="//" if r.get("extrapolated") and key == "epoch_wall_s" else None, edgecolor="black", linewidth=0.4,
                              label=variant if variant not in ax.get_legend_handles_labels()[1] else None)
                ax.bar_label(bars, labels=[f"{value:,.0f}" if value >= 10 else f"{value:.3g}"], fontsize=6)
        ax.set_yscale("log")
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels(datasets)
        ax.set_ylabel(label)
    unique = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    if any(r.get("extrapolated") for r in records):
        from matplotlib.patches import Patch

        unique["extrapolated time"] = Patch(facecolor="white", edgecolor="black", hatch="//")
    fig.legend(list(unique.values()), list(unique), fontsize=7, loc="outside right upper", frameon=False)
    fig.suptitle("SFT cost of one epoch by variant (log scale)", fontsize=9)
    return save_figure(fig, base)


def dataset_plots(metrics_paths, out_dir: str | os.PathLike, metric: str = "ndcg@10",
                  order: dict | None = None, ends: tuple[str, str] | None = None) -> list[Path]:
    """Scores and convergence plots for every dataset among the runs: ``out_dir``/{dataset}/{scores,convergence}."""
    runs = load_runs(metrics_paths)
    if not runs:
        raise P2RecError("no runs given: nothing to plot")
    grid = build_grid(runs, order, ends=ends)
    written = []
    for dataset in grid.datasets:
        written += plot_scores(grid, dataset, metric, Path(out_dir) / dataset / "scores")
        written += plot_convergence(grid, dataset, metric, Path(out_dir) / dataset / "convergence")
    return written
