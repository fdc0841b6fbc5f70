"""Run folders: loading, failure records, collecting, and grouping runs into the table's grid.

A run is ``.../{dataset}/{backbone}/{variant}/seed{seed}/`` holding metrics.json, ranks.csv.gz,
timing.json, config.json, history.csv and (from the workflow) provenance.json. The tables are built from an
explicit list of metrics.json paths (the workflow's gather rule declares them as inputs); ``find_runs``
walks a folder only for ``collect`` / ``tables --from``, which rebuild the tables from compact results
gathered elsewhere.
"""
from __future__ import annotations

import gzip
import json
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
from p2rec.report.formatting import one_line

RUN_FILES = ("metrics.json", "ranks.csv.gz", "timing.json", "config.json", "history.csv", "provenance.json")
EXTRACT_TIMING = "extract_timing.json"
#: checksum keys a run's config.json may carry about its dataset (see ``Run.dataset_version``)
DATASET_VERSION_KEYS = ("data_sha256", "dataset_sha256", "input_sha256", "data_version")


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
            if not path.exists():
                raise P2RecError(f"{path}: per-user ranks missing for the finished run {self.name} "
                                 "(every statistic is computed from them; copy or regenerate the run folder)")
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

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.variant}/seed{self.seed}"

    def user_metric(self, metric: str) -> pd.Series:
        """Per-user test metric indexed by user."""
        ranks = self.ranks()
        return pd.Series(per_user_metric(ranks.to_numpy(), metric), index=ranks.index)

    def score(self, metric: str) -> float:
        return float(per_user_metric(self.ranks().to_numpy(), metric).mean())

    def dataset_version(self) -> dict:
        """What the run records about its dataset's identity: checksums and sizes found in config.json
        (top level or under ``data_stats`` / ``dataset_stats`` / ``dataset``) and the user count of
        metrics.json. Runs compared with each other must agree on every key both record."""
        config = self.config()
        found = {}
        for key in DATASET_VERSION_KEYS:
            if isinstance(config.get(key), (str, int, float)):
                found[key] = config[key]
        for block in ("data_stats", "dataset_stats", "dataset"):
            if isinstance(config.get(block), dict):
                for key in DATASET_VERSION_KEYS + ("sha256", "users", "items", "interactions"):
                    if isinstance(config[block].get(key), (str, int, float)):
                        found[f"{block}.{key}"] = config[block][key]
        if isinstance(self.metrics.get("users"), int):
            found["users"] = self.metrics["users"]
        provenance = self.provenance() or {}
        if isinstance(provenance.get("data_version"), str):  # written by the workflow (run lineage)
            found["provenance.data_version"] = provenance["data_version"]
        return found

    def provenance(self) -> dict | None:
        """provenance.json beside metrics.json, or None when the run has none."""
        path = self.path / "provenance.json"
        return read_json_or_empty(path) if path.exists() else None

    def timing(self) -> dict:
        return read_json_or_empty(self.path / "timing.json")

    def config(self) -> dict:
        return read_json_or_empty(self.path / "config.json")

    def history(self) -> pd.DataFrame:
        path = self.path / "history.csv"
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame()
        try:
            return pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise P2RecError(f"{path}: cannot read training history ({err})") from None


def read_json_or_empty(path: Path) -> dict:
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
    write_json(out / "metrics.json", {"status": "failed", "reason": one_line(reason, 2000), "seed": seed})


def write_gzip_text(path: str | os.PathLike, text: str) -> None:
    """Deterministic gzip (mtime 0), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            fh.write(text.encode("utf-8"))


def stale_reason(run: Run) -> str:
    """Why a finished run's numbers may not come from the current checkout ('' when they do).

    A run without provenance.json counts as stale (nothing says which code made it); a run with one is stale
    when ``p2rec.workflow.versions.stale_stages`` names any of its recorded stages."""
    provenance = run.provenance()
    if provenance is None:
        return "no provenance.json"
    versions = provenance.get("code_versions")
    if not isinstance(versions, dict):
        return "provenance.json records no code_versions"
    try:
        from p2rec.workflow.versions import stale_stages
    except ModuleNotFoundError as err:
        if err.name not in ("p2rec.workflow.versions", "p2rec.workflow"):
            raise
        return ""  # no way to compare versions in this checkout: the recorded provenance is taken as current
    stages = stale_stages(versions)
    return f"stale stages: {', '.join(stages)}" if stages else ""


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
    #: the seeds the grid declares for this cell (build_grid given the grid's seeds); None = not known
    declared: frozenset[int] | None = None

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
    (``order['dataset_seeds']`` gives a dataset seeds of its own, ``order['variant_seeds']`` a variant fewer).
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
    from p2rec.workflow.seeds import run_seeds

    names = ("datasets", "backbones", "variants", "seeds")
    if expect:
        lists = [list(order.get(n, [])) for n in names[:3]]
        for d in lists[0]:
            for b in lists[1]:
                for v in lists[2]:
                    for s in run_seeds(order, d, v):
                        by_key.setdefault((d, b, v, s), Run(d, b, v, s, Path(d, b, v, f"seed{s}"), status="failed",
                                                            reason="no result (metrics.json not found)"))
        by_key = {k: r for k, r in by_key.items()
                  if all(k[i] in lists[i] for i in range(3)) and k[3] in run_seeds(order, k[0], k[2])}
    cells: dict[tuple[str, str, str], Cell] = {}
    for key in sorted(by_key, key=lambda k: k[3]):
        cells.setdefault(key[:3], Cell([])).runs.append(by_key[key])
    if order.get("seeds"):  # the grid's seeds are known: each cell's (variant_seeds may narrow them)
        for (d, _, v), cell in cells.items():
            cell.declared = frozenset(run_seeds(order, d, v))
    appearance = [list(dict.fromkeys(k[i] for k in by_key)) for i in range(3)]
    return Grid(*(_ordered(appearance[i], order.get(names[i])) for i in range(3)), cells)

