"""The files of an experiment's grid, as the rules declare them.

Every path here is relative to the experiment's working folder (``<work_dir>/<name>/``); the rules prefix
it. With ``experiment.restore_published`` a run whose published copy has the current lineage is restored,
and so are the stage records (SFT and extraction timing, stage-0 timing, parse evaluation) of a dataset's
variant whose runs are all restored: those records are then read from the published folder, so nothing
upstream of a restored run is recomputed.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from p2rec.workflow.config import dataset_seeds, train_settings
from p2rec.workflow.experiment import (RUN_FILES, pipeline_name, published_record, restore_roots, run_lineage,
                                       run_restorable, work_root)
from p2rec.workflow.seeds import run_seeds

from p2rec.report.files import PLOT_KINDS, TABLE_FILES  # names only: no statistics imported while parsing


def run_dir(dataset: str, backbone: str, variant: str, seed) -> str:
    return f"runs/{dataset}/{backbone}/{variant}/seed{seed}"


def grid(config: dict, datasets: list[str] | None = None):
    for d in datasets or config["datasets"]:
        for b in config["backbones"]:
            for v in config["variants"]:
                for s in run_seeds(config, d, v):
                    yield d, b, v, s


def run_files(config: dict, name: str, datasets: list[str] | None = None) -> list[str]:
    """``name`` (metrics.json, ranks.csv.gz, ...) of every configured run, optionally of some datasets only."""
    return [f"{run_dir(*key)}/{name}" for key in grid(config, datasets)]


# json of the config is the cache key: the Snakefile asks these per job, the answer depends on config only
@functools.lru_cache(maxsize=None)
def _lineage(config_json: str, dataset: str, backbone: str, variant: str, seed: int) -> dict:
    return run_lineage(json.loads(config_json), dataset, backbone, variant, seed)


def lineage(config: dict, dataset: str, backbone: str, variant: str, seed) -> dict:
    return _lineage(json.dumps(config, sort_keys=True, default=str), dataset, backbone, variant, int(seed))


def restorable(config: dict, dataset: str, backbone: str, variant: str, seed) -> bool:
    roots = restore_roots(config)
    if not roots:
        return False
    fingerprint = lineage(config, dataset, backbone, variant, seed)["lineage"]
    rel = run_dir(dataset, backbone, variant, seed)
    return any(run_restorable(Path(root) / rel, fingerprint) for root in roots)


def variant_restored(config: dict, dataset: str, variant: str) -> bool:
    """Every configured run of this dataset and variant comes from the published folder."""
    keys = [k for k in grid(config, [dataset]) if k[2] == variant]
    return bool(keys) and all(restorable(config, *k) for k in keys)


def _record(config: dict, rel: str, restored: bool) -> str:
    """A stage record: its published copy when restored (from this experiment's folder or one it restores
    from) and present, else the working file."""
    published = published_record(config, rel) if restored else None
    return published or f"{work_root(config)}/{rel}"


def _template(template: str) -> str:
    # report templates written before experiments had working folders name results/...: same file
    return template[len("results/"):] if template.startswith("results/") else template


def report_pipeline(config: dict, dataset: str, variant: str | None = None) -> str:
    """Whose stage records the efficiency table shows: the shared stages, or (pipeline seeds) the first seed's
    (of the variant's seeds where variant_seeds narrows them)."""
    seeds = run_seeds(config, dataset, variant) if variant else dataset_seeds(config, dataset)
    return pipeline_name(config, seeds[0])


def llm_timing_files(config: dict, extraction: bool = False) -> list[str]:
    """SFT (or extraction) timing records of the configured variants named in report.sft_variants (full paths)."""
    settings = config["report"]
    template = settings["extract_timing"] if extraction else settings["sft_timing"]
    if not template:
        return []
    return [_record(config, _template(template).format(dataset=d, variant=v, pipeline=report_pipeline(config, d, v)),
                    variant_restored(config, d, v))
            for d in config["datasets"] for v in config["variants"] if v in settings["sft_variants"]]


def _uses_stage0(config: dict) -> bool:
    return any("pretrain" in (config["variant_catalog"].get(v) or {}).get("lineage", []) for v in config["variants"])


def stage0_timing_files(config: dict) -> list[str]:
    """Stage-0 timing records (full paths) where a configured variant starts from stage 0's item table."""
    template = config["report"].get("stage0_timing")
    if not template or not _uses_stage0(config):
        return []
    out = []
    for d in config["datasets"]:
        users = [v for v in config["variants"] if "pretrain" in config["variant_catalog"][v].get("lineage", [])]
        out.append(_record(config, _template(template).format(dataset=d, pipeline=report_pipeline(config, d)),
                           all(variant_restored(config, d, v) for v in users)))
    return out


def llm_variants(config: dict) -> list[str]:
    """The configured variants that fine-tune the LLM (p2rec, instance, and catalog entries with ``sft``)."""
    from p2rec.llm.settings import variant_sft_mode

    return [v for v in config["variants"] if variant_sft_mode(config, v)]


def parse_eval_files(config: dict) -> list[str]:
    """The parse evaluation of every configured LLM variant, and its evaluation against the real item
    categories where the dataset has them (``items_from``; rules/items.smk)."""
    return [_record(config, f"llm/{report_pipeline(config, d, v)}/{d}/{v}/parse_eval.json", variant_restored(config, d, v))
            for d in config["datasets"] for v in llm_variants(config)] + attribute_eval_files(config)


def attribute_eval_files(config: dict) -> list[str]:
    """Parsed and k-means categories against the dataset's real categories, for datasets with ``items_from``.
    A restored variant's record is used where it was published; none is computed for it otherwise (that
    would need its LLM stages)."""
    out = []
    for d in config["datasets"]:
        if not (config["catalog"][d].get("items_from")):
            continue
        for v in llm_variants(config):
            rel = f"llm/{report_pipeline(config, d, v)}/{d}/{v}/attribute_eval.json"
            restored = variant_restored(config, d, v)
            if restored and not published_record(config, rel):
                continue
            out.append(_record(config, rel, restored))
    return out


def table_files() -> list[str]:
    return [f"tables/{name}" for name in TABLE_FILES]


def plot_files(config: dict) -> list[str]:
    files = [f"plots/{d}/{kind}.{fmt}" for d in config["datasets"] for kind in PLOT_KINDS for fmt in ("png", "pdf")]
    if llm_timing_files(config):
        files += ["plots/sft_efficiency.png", "plots/sft_efficiency.pdf"]
    return files


def calibration_files(config: dict) -> list[str]:
    """The A/A calibration tables (``calibration`` configured): one per dataset x backbone, CSV + markdown."""
    if not config.get("calibration"):
        return []
    return [f"tables/calibration/{d}_{b}.{ext}" for d in config["datasets"] for b in config["backbones"]
            for ext in ("csv", "md")]


def report_files(config: dict) -> list[str]:
    """Tables, plots, the category table and the calibration tables, relative to the working folder."""
    return (table_files() + plot_files(config) + (["tables/categories.csv"] if llm_variants(config) else [])
            + calibration_files(config))


def _records(config: dict) -> list[str]:
    return (llm_timing_files(config) + llm_timing_files(config, extraction=True) + stage0_timing_files(config)
            + parse_eval_files(config))


def publish_inputs(config: dict) -> list[str]:
    """Full paths of what the publish rule copies: working files, and restored records where they are."""
    work = work_root(config)
    files = [f"{work}/{run_dir(*k)}/{name}" for k in grid(config) for name in RUN_FILES]
    files += [f"{work}/{f}" for f in report_files(config)]
    files += [f"{work}/data/{d}/stats.json" for d in config["datasets"]]
    return files + _records(config)


def item_init_file(config: dict, dataset: str, backbone: str, variant: str, seed) -> str | None:
    template = config["variant_catalog"][variant].get("item_init")
    if not template:
        return None
    hidden = train_settings(config, dataset, backbone)["train"]["hidden"]
    path = template.format(dataset=dataset, hidden=hidden, pipeline=pipeline_name(config, seed))
    return f"{work_root(config)}/{path}"
