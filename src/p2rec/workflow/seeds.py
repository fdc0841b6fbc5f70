"""Which seeds each cell of the grid runs: a dataset's seeds ('seeds', narrowed by 'dataset_seeds'), narrowed
again for a variant by 'variant_seeds' (a costly ablation on fewer seeds than the rest of its grid).

Kept apart from ``workflow/config.py`` on purpose: that module is part of every run's code version (data
preparation imports it), and the grid's shape is no part of what a run computes.
"""
from __future__ import annotations

from p2rec import P2RecError
from p2rec.workflow.config import dataset_seeds


def run_seeds(config: dict, dataset: str, variant: str) -> list[int]:
    """The seeds the grid runs ``variant`` on ``dataset``: the dataset's seeds, narrowed by the variant's entry in
    'variant_seeds' where it has one. ``config``: a configuration or the tables' grid (``report_context``)."""
    narrowed = (config.get("variant_seeds") or {}).get(variant)
    return [s for s in dataset_seeds(config, dataset) if narrowed is None or s in narrowed]


def check_variant_seeds(config: dict) -> None:
    """'variant_seeds' names known variants and only seeds the grid runs (a seed of its own would have no
    counterpart to be compared with)."""
    all_seeds = set(config["seeds"]).union(*map(set, (config.get("dataset_seeds") or {}).values()))
    problems = []
    for name, seeds in (config.get("variant_seeds") or {}).items():
        if name not in config.get("variant_catalog", {}):
            problems.append(f"config key 'variant_seeds.{name}': unknown variant '{name}' (no entry in "
                            f"'variant_catalog')")
        extra = sorted(set(seeds) - all_seeds)
        if extra:
            problems.append(f"config key 'variant_seeds.{name}': seed(s) {extra} not among the grid's seeds "
                            f"{sorted(all_seeds)} ('seeds', 'dataset_seeds')")
    if problems:
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(problems))
