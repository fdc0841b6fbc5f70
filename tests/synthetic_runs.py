"""Simulated run folders for the statistics tests: per-user test ranks with a per-run random shift.

log(rank + 1) = user difficulty + run shift + user-run noise (- effect for a planted method). The run shift
stands for what a seed does to a whole training run (data order, initialisation); it moves every user of
the run together, which a test over users cannot tell from a method effect.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from p2rec.report.runs import write_gzip_text


def simulate_ranks(n_users: int, seeds, *, run_sd: float, user_sd: float, effect: float = 0.0,
                   rng_seed: int = 0, shifts: dict | None = None) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Ranks per seed (users 0..n_users-1) and the run shift each seed drew. ``shifts``: reuse another
    method's shifts (same seed = same data order and initialisation), plus a smaller shift of its own."""
    rng = np.random.default_rng(rng_seed)
    difficulty = np.random.default_rng(12345).normal(1.5, 1.2, n_users)  # the same test users for every run
    ranks, drawn = {}, {}
    for seed in seeds:
        shift = rng.normal(0.0, run_sd) if shifts is None else shifts[seed] + rng.normal(0.0, run_sd / 3)
        drawn[seed] = shift
        log_rank = difficulty + shift + rng.normal(0.0, user_sd, n_users) - effect
        ranks[seed] = np.maximum(np.floor(np.expm1(np.maximum(log_rank, 0.0))), 0).astype(np.int64)
    return ranks, drawn


def write_run(root: Path, dataset: str, backbone: str, variant: str, seed: int, ranks: np.ndarray,
              users: np.ndarray | None = None, config: dict | None = None) -> Path:
    """One finished run folder; returns its metrics.json."""
    folder = root / dataset / backbone / variant / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    users = np.arange(len(ranks)) if users is None else users
    write_gzip_text(folder / "ranks.csv.gz", "user,rank\n" + "".join(f"{u},{r}\n" for u, r in zip(users, ranks)))
    (folder / "config.json").write_text(json.dumps(config or {"seed": seed}))
    (folder / "metrics.json").write_text(json.dumps({"status": "ok", "seed": seed, "users": len(ranks), "test": {}}))
    return folder / "metrics.json"


def write_method(root: Path, variant: str, ranks: dict[int, np.ndarray], dataset: str = "sim",
                 backbone: str = "sasrec") -> list[Path]:
    return [write_run(root, dataset, backbone, variant, seed, r) for seed, r in sorted(ranks.items())]
