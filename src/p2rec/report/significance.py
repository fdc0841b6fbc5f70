"""The comparisons of the tables (METHOD.md section 7, docs/statistics.md).

The unit of replication is the training run. Each comparison is a paired t-test over seeds on per-seed
means (``stats.seed_ttest``): the same seed on both sides means the same data order and initialisation
apart from the item table, so pairing removes what the seed does to both. A comparison whose sides share
one finished seed gets its effect with a bootstrap interval over users, labelled "users only", and no
decision.

Families: every variant vs the baseline (``report.baseline``, default ``none``), every LLM variant (any
variant other than the baseline and the control) vs the control (``report.control``, default ``cf_init``)
when the control is in the grid, and the extra ``report.pairs``. Holm's correction runs within each
(dataset, backbone, metric) family.

Outputs: ``significance_table`` (significance.csv: the rows of ``report.test``), ``verdict_table`` (always
the seed-level test: verdict.{md,csv,tex}) and ``robustness_table`` (robustness.*: the earlier seed-level
check against the baseline only, Holm across the whole table, kept as it was).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from p2rec import P2RecError
from p2rec.report.captions import family_text, seeds_text
from p2rec.report.formatting import STALE_CAPTION, STALE_MARK, fmt_p, fmt_pct, metric_label, render_simple
from p2rec.report.runs import Cell, Grid
from p2rec.report.settings import SEED_TEST, table_metrics
from p2rec.report.stats import (adjust, compare_seeds, compare_users, relative_effect, seed_ttest)

SIGNIFICANCE_COLUMNS = ["dataset", "backbone", "metric", "treatment", "comparator", "test", "statistic", "p_raw",
                        "p_holm", "effect", "ci_low", "ci_high", "n_users", "n_seeds", "n_seeds_comparator",
                        "mean_treatment", "mean_comparator", "significant", "df", "mde", "power", "family_size",
                        "seeds", "interval", "stale"]
USERS_ONLY = "users only"
FAMILY_KEYS = ["dataset", "backbone", "metric"]


# ----------------------------------------------------------------------------------------------- comparisons
def baseline_comparisons(grid: Grid, settings: dict) -> list[tuple[str, str]]:
    """Every variant vs the baseline, plus report.pairs (the robustness table's comparisons)."""
    base = settings["baseline"]
    pairs = [(v, base) for v in grid.variants if v != base and base in grid.variants]
    return _with_extra_pairs(pairs, grid, settings)


def comparisons(grid: Grid, settings: dict) -> list[tuple[str, str]]:
    """(treatment, comparator) pairs of one family: every variant vs the baseline, every LLM variant vs the
    control when the control is in the grid, plus report.pairs."""
    base, control = settings["baseline"], settings.get("control")
    pairs = [(v, base) for v in grid.variants if v != base and base in grid.variants]
    if control and control != base and control in grid.variants:
        pairs += [(v, control) for v in grid.variants if v not in (base, control)]
    return _with_extra_pairs(pairs, grid, settings)


def _with_extra_pairs(pairs, grid, settings):
    for pair in settings.get("pairs", []):
        t, c = pair["treatment"], pair["comparator"]
        if t in grid.variants and c in grid.variants and (t, c) not in pairs and t != c:
            pairs.append((t, c))
    return pairs


def comparable_cells(grid: Grid, settings: dict, pairs=None):
    """(dataset, backbone, metric, treatment, comparator, treatment cell, comparator cell) of every comparison
    whose two cells both have finished runs."""
    pairs = comparisons(grid, settings) if pairs is None else pairs
    for d, b in grid.rows():
        for metric in table_metrics(settings):
            for t, c in pairs:
                ct, cc = grid.cell(d, b, t), grid.cell(d, b, c)
                if ct is not None and cc is not None and ct.ok_runs and cc.ok_runs:
                    yield d, b, metric, t, c, ct, cc


# ----------------------------------------------------------------------------------------------- pairing
def _names(runs) -> str:
    return ", ".join(str(r.path) for r in runs)


def paired_seeds(ct: Cell, cc: Cell) -> list[int]:
    """The seeds finished on both sides, after checking that the two cells can be paired at all: the same
    seeds (finished or failed), the same test users and the same dataset version in every finished run.
    Anything else means runs of different grids or datasets were mixed: a P2RecError names them. Two cells
    whose seeds are exactly those the grid declares for them (variant_seeds) pair the seeds they share."""
    st, sc = {r.seed: r for r in ct.runs}, {r.seed: r for r in cc.runs}
    declared = ct.declared is not None and cc.declared is not None and \
        set(st) == ct.declared and set(sc) == cc.declared
    if set(st) != set(sc) and not declared:
        only_t = [st[s] for s in sorted(set(st) - set(sc))]
        only_c = [sc[s] for s in sorted(set(sc) - set(st))]
        raise P2RecError(
            f"cannot pair {ct.runs[0].variant} with {cc.runs[0].variant} over seeds: seeds {sorted(st)} vs "
            f"{sorted(sc)}; without a counterpart: {_names(only_t + only_c)} (the same seeds must be run for "
            "every variant of a dataset; dataset_seeds narrows a dataset's seeds, variant_seeds a variant's)")
    finished = ct.ok_runs + cc.ok_runs
    if finished:
        ref = finished[0]
        users = np.sort(ref.ranks().index.to_numpy())
        for run in finished[1:]:
            other = np.sort(run.ranks().index.to_numpy())
            if len(other) != len(users) or not np.array_equal(other, users):
                raise P2RecError(f"{ref.path} and {run.path}: different test users ({len(users)} vs {len(other)}; "
                                 f"{len(np.setxor1d(users, other))} in one only): not runs on the same split")
        # each identity key against the first run that records it (runs may record different keys)
        first: dict[str, tuple] = {}
        for run in finished:
            for key, value in run.dataset_version().items():
                seen, owner = first.setdefault(key, (value, run))
                if seen != value:
                    raise P2RecError(f"{owner.path} and {run.path}: different dataset versions "
                                     f"({key}: {seen!r} vs {value!r})")
    ok_t, ok_c = {r.seed for r in ct.ok_runs}, {r.seed for r in cc.ok_runs}
    return sorted(ok_t & ok_c)


def seed_comparison(ct: Cell, cc: Cell, metric: str, settings: dict) -> dict:
    """One comparison by the seed-level test (two or more shared finished seeds), or its effect over users
    only (one shared seed: no test, no decision)."""
    seeds = paired_seeds(ct, cc)
    rt, rc = {r.seed: r for r in ct.ok_runs}, {r.seed: r for r in cc.ok_runs}
    row = {"n_seeds": len(seeds), "n_seeds_comparator": len(cc.ok_runs), "seeds": " ".join(map(str, seeds)),
           "n_users": len(rt[seeds[0]].ranks()) if seeds else 0, "df": math.nan, "mde": math.nan,
           "power": settings["power"], "statistic": math.nan, "p_raw": math.nan}
    if len(seeds) >= 2:
        res = seed_ttest([rt[s].score(metric) for s in seeds], [rc[s].score(metric) for s in seeds],
                         alpha=settings["alpha"], power=settings["power"])
        row.update(test=SEED_TEST, interval="t (seeds)", statistic=res.statistic, p_raw=res.p_value, df=res.df,
                   effect=res.effect, ci_low=res.ci_low, ci_high=res.ci_high, mde=res.mde,
                   mean_treatment=res.mean_treatment, mean_comparator=res.mean_comparator)
    elif seeds:
        t_users, c_users = rt[seeds[0]].user_metric(metric), rc[seeds[0]].user_metric(metric)
        joined = pd.concat([t_users.rename("t"), c_users.rename("c")], axis=1, join="inner")
        effect, low, high = relative_effect(joined["t"].to_numpy(), joined["c"].to_numpy(),
                                            n_resamples=settings["bootstrap_samples"], seed=settings["seed"])
        row.update(test=USERS_ONLY, interval="bootstrap (users only)", effect=effect, ci_low=low, ci_high=high,
                   mean_treatment=float(joined["t"].mean()), mean_comparator=float(joined["c"].mean()))
    else:
        row.update(test="no shared seed", interval="", effect=math.nan, ci_low=math.nan, ci_high=math.nan,
                   mean_treatment=math.nan, mean_comparator=math.nan)
    return row


def user_comparison(ct: Cell, cc: Cell, metric: str, settings: dict) -> dict:
    """The within-pair (users) analysis: a paired test over test users on seed-averaged per-user values."""
    paired_seeds(ct, cc)  # the same integrity checks
    kind = "ttest" if settings["test"] == "users_ttest" else "permutation"
    res = compare_users(ct.user_means(metric), cc.user_means(metric), kind, n_bootstrap=settings["bootstrap_samples"],
                        n_permutations=settings["permutation_samples"], seed=settings["seed"])
    return {**res, "test": settings["test"], "interval": "bootstrap (users)", "n_seeds": len(ct.ok_runs),
            "n_seeds_comparator": len(cc.ok_runs), "seeds": " ".join(str(r.seed) for r in ct.ok_runs),
            "df": math.nan, "mde": math.nan, "power": math.nan}


# ----------------------------------------------------------------------------------------------- families
def family_adjust(p_values, family: str, method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family (NaN = no test, not counted). An empty family is an error: it means
    the comparisons were assembled wrongly, and Holm over nothing would hide that."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        raise P2RecError(f"family {family}: no comparisons to correct (is its baseline in the grid?)")
    return adjust(p, method)


def _adjust_families(table: pd.DataFrame, settings: dict) -> pd.DataFrame:
    table = table.copy()
    table["p_holm"] = np.nan
    table["family_size"] = 0
    for key, index in table.groupby(FAMILY_KEYS, sort=False).groups.items():
        p = table.loc[index, "p_raw"].to_numpy(dtype=float)
        table.loc[index, "p_holm"] = family_adjust(p, " / ".join(key), settings["correction"])
        table.loc[index, "family_size"] = int(np.sum(~np.isnan(p)))
    table["family_size"] = table["family_size"].astype(int)
    table["significant"] = table["p_holm"] < settings["alpha"]  # NaN (no test) compares False
    return table


def _comparison_table(grid: Grid, settings: dict, compare, stale_cells) -> pd.DataFrame:
    rows = []
    for d, b, metric, t, c, ct, cc in comparable_cells(grid, settings):
        try:
            res = compare(ct, cc, metric, settings)
        except P2RecError as err:
            raise P2RecError(f"{d} / {b} / {metric}: {t} vs {c}: {err}") from None
        rows.append({"dataset": d, "backbone": b, "metric": metric, "treatment": t, "comparator": c, **res,
                     "stale": (d, b, t) in stale_cells or (d, b, c) in stale_cells})
    table = pd.DataFrame(rows, columns=[c for c in SIGNIFICANCE_COLUMNS if c not in ("p_holm", "significant",
                                                                                      "family_size")])
    if len(table):
        table = _adjust_families(table, settings)
    else:
        table = table.assign(p_holm=pd.Series(dtype=float), significant=pd.Series(dtype=bool),
                             family_size=pd.Series(dtype=int))
    return table[SIGNIFICANCE_COLUMNS]


def verdict_table(grid: Grid, settings: dict, stale_cells=frozenset()) -> pd.DataFrame:
    """Every comparison of the families by the seed-level test, Holm within each family."""
    return _comparison_table(grid, settings, seed_comparison, stale_cells)


def significance_table(grid: Grid, settings: dict, stale_cells=frozenset(),
                       verdicts: pd.DataFrame | None = None) -> pd.DataFrame:
    """significance.csv: the rows of ``report.test``: the seed-level test (default; the verdict rows) or the
    within-pair (users) analysis, both with Holm within each family."""
    if settings["test"] == SEED_TEST:
        return verdict_table(grid, settings, stale_cells) if verdicts is None else verdicts
    return _comparison_table(grid, settings, user_comparison, stale_cells)


def robustness_table(grid: Grid, settings: dict) -> pd.DataFrame:
    """Seed-level paired t-test on per-seed scores (seeds matched by id) against the baseline (and
    report.pairs), Holm across the whole table: the earlier robustness check, unchanged."""
    rows = []
    for d, b, metric, t, c, ct, cc in comparable_cells(grid, settings, baseline_comparisons(grid, settings)):
        res = compare_seeds(ct.seed_scores(metric), cc.seed_scores(metric))
        rows.append({"dataset": d, "backbone": b, "metric": metric, "treatment": t, "comparator": c, **res})
    cols = ["dataset", "backbone", "metric", "treatment", "comparator", "n_seeds", "wins", "mean_diff", "effect",
            "statistic", "p_raw"]
    table = pd.DataFrame(rows, columns=cols)
    table["p_holm"] = adjust(table["p_raw"].to_numpy(dtype=float), settings["correction"]) if len(table) else []
    table["significant"] = table["p_holm"] < settings["alpha"]
    return table


# ----------------------------------------------------------------------------------------------- rendering
def render_robustness(rob: pd.DataFrame, settings: dict, seeds: dict[str, list[int]]) -> tuple[str, str]:
    """``seeds``: each dataset's seeds (``Grid.seeds_by_dataset``)."""
    if len({tuple(v) for v in seeds.values()}) > 1:
        seeds_label = seeds_text(seeds)
    else:
        seeds_label = "seeds " + ", ".join(map(str, sorted({s for v in seeds.values() for s in v})))
    shown = pd.DataFrame({
        "dataset": rob["dataset"], "backbone": rob["backbone"], "metric": rob["metric"].map(metric_label),
        "comparison": rob["treatment"] + " vs " + rob["comparator"], "seeds": rob["n_seeds"].astype(int),
        "wins": rob["wins"].astype(int), "mean diff": rob["mean_diff"].map(lambda x: f"{x:+.4f}"),
        "effect": rob["effect"].map(lambda x: "n/a" if math.isnan(x) else f"{x * 100:+.2f}%"),
        "t": rob["statistic"].map(lambda x: "n/a" if math.isnan(x) else f"{x:.2f}"),
        "p": rob["p_raw"].map(fmt_p), "p (adj.)": rob["p_holm"].map(fmt_p),
        "sig.": [("n/a" if math.isnan(p) else ("yes" if x else "no")) for p, x in zip(rob["p_holm"], rob["significant"])],
    })
    corr = "Holm-adjusted across the rows of this table" if settings["correction"] == "holm" else "unadjusted"
    caption = (f"Robustness: seed-level two-sided paired t-test (per-seed test scores, seeds matched by id; "
               f"{seeds_label}); p (adj.) {corr}, alpha = {settings['alpha']:g}; "
               f"wins = seeds where the first variant scores higher; n/a where fewer than two seeds are shared.")
    return render_simple(shown, caption, "tab:robustness")


def _effect_text(row: dict) -> str:
    text = fmt_pct(row["effect"])
    if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
        text += f" [{fmt_pct(row['ci_low'])}, {fmt_pct(row['ci_high'])}]"
    return text + (" users only" if row["test"] == USERS_ONLY else "")


def _p_text(row: dict) -> str:
    if not math.isfinite(row["p_raw"]):
        return "n/a"
    return f"{fmt_p(row['p_raw'])} / {fmt_p(row['p_holm'])}"


def _decision(row: dict) -> str:
    if row["test"] != SEED_TEST or not math.isfinite(row["p_holm"]):
        return "n/a"
    return "yes" if row["significant"] else "no"


def verdict_frames(verdicts: pd.DataFrame, grid: Grid, settings: dict) -> list[tuple[str, str, pd.DataFrame]]:
    """Per dataset x backbone, the verdict rows as strings: one row per metric and non-baseline variant,
    effect vs the baseline, vs the control and vs each other comparator of report.pairs side by side."""
    base, control = settings["baseline"], settings.get("control")
    comparators = [base] + ([control] if control and control != base and control in grid.variants else [])
    comparators += list(dict.fromkeys(p["comparator"] for p in settings.get("pairs", [])
                                      if p["comparator"] in grid.variants and p["comparator"] not in comparators))
    index = {(r["dataset"], r["backbone"], r["metric"], r["treatment"], r["comparator"]): r
             for r in verdicts.to_dict("records")}
    out = []
    for d, b in grid.rows():
        rows = []
        for metric in table_metrics(settings):
            for v in grid.variants:
                if v == base or grid.cell(d, b, v) is None:
                    continue
                found = [index.get((d, b, metric, v, c)) for c in comparators]
                stale = any(r is not None and r["stale"] for r in found)
                shown = {"metric": metric_label(metric), "variant": v + (STALE_MARK["md"] if stale else ""),
                         "seeds": next((str(r["n_seeds"]) for r in found if r is not None), "0")}
                for c, r in zip(comparators, found):
                    if r is None:  # no comparison: the variant itself, an absent cell, or a side without runs
                        other = grid.cell(d, b, c)
                        failed = v != c and other is not None and not (other.ok_runs and grid.cell(d, b, v).ok_runs)
                        shown.update({f"vs {c}: effect [95% CI]": "failed" if failed else "—",
                                      f"vs {c}: p / Holm": "", f"vs {c}: sig.": "", f"vs {c}: MDE": ""})
                        continue
                    shown[f"vs {c}: effect [95% CI]"] = _effect_text(r)
                    shown[f"vs {c}: p / Holm"] = _p_text(r)
                    shown[f"vs {c}: sig."] = _decision(r)
                    shown[f"vs {c}: MDE"] = fmt_pct(r["mde"]).lstrip("+") if math.isfinite(r["mde"]) else "n/a"
                rows.append(shown)
        if rows:
            out.append((d, b, pd.DataFrame(rows)))
    return out


def verdict_caption(settings: dict, n_comparisons: int | None, stale: bool, variants: list[str] | None = None) -> str:
    text = (f"Verdicts: relative effect (mean per-seed difference over the comparator's mean) with its 95% t "
            f"interval over seeds; p / Holm = two-sided paired t-test over seeds on per-seed means (df = seeds - 1), "
            f"raw and Holm-adjusted; {family_text(settings, n_comparisons, variants)}; sig. = Holm-adjusted p below "
            f"alpha = {settings['alpha']:g}; MDE = minimum detectable relative effect at power {settings['power']:g} with "
            "these seeds (from the observed seed-to-seed spread of the differences); seeds = seeds finished on both "
            "sides. 'users only': one shared seed, effect with a bootstrap interval over test users, which holds "
            "the run fixed and so is no evidence about the method: no test, no decision.")
    if stale:
        text += " " + STALE_CAPTION
    return text


def render_verdicts(verdicts: pd.DataFrame, grid: Grid, settings: dict, stale: bool = False) -> tuple[str, str]:
    """Markdown (one table per dataset x backbone under its heading) and LaTeX (one table environment each)."""
    frames = verdict_frames(verdicts, grid, settings)
    sizes = verdicts["family_size"] if len(verdicts) else pd.Series(dtype=int)
    caption = verdict_caption(settings, int(sizes.max()) if len(sizes) else None, stale, grid.variants)
    md, tex = [f"Table: {caption}", ""], []
    if not frames:
        md.append("(no comparisons: the baseline or the compared variants have no finished runs)")
    for d, b, frame in frames:
        one_md, one_tex = render_simple(frame, f"{d} / {b}. {caption}", f"tab:verdict-{d}-{b}")
        md += [f"## {d} / {b}", ""] + one_md.split("\n", 2)[2].rstrip("\n").split("\n") + [""]
        tex.append(one_tex)
    return "\n".join(md).rstrip("\n") + "\n", "\n".join(tex) if tex else "% no comparisons\n"


def stale_cells_of(grid: Grid, staleness) -> dict[tuple[str, str, str], list[str]]:
    """(dataset, backbone, variant) -> 'seed N: reason' of each finished run that ``staleness`` (Run -> reason,
    '' when current) flags."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for key, cell in grid.cells.items():
        reasons = []
        for run in cell.ok_runs:
            why = staleness(run)
            if why:
                reasons.append(f"seed {run.seed}: {why}")
        if reasons:
            out[key] = reasons
    return out

