"""Calibration of the tables' test on simulated runs whose seed moves the whole run (tests/synthetic_runs.py).

With a per-run shift larger than what the user noise leaves in a mean over users, a test over users calls
seed noise significant far above alpha; the seed-level test stays at about alpha and still detects a
planted effect.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from p2rec import P2RecError
from p2rec.cli import main as cli
from p2rec.evaluation import per_user_metric
from p2rec.report.calibration import balanced_splits, calibrate, rejection_counts
from tests.synthetic_runs import simulate_ranks, write_method, write_run


def _users(ranks: dict[int, np.ndarray], metric: str = "ndcg@10") -> dict[int, pd.Series]:
    return {s: pd.Series(per_user_metric(r, metric)) for s, r in ranks.items()}


def test_seed_level_test_holds_its_level_where_the_user_level_test_does_not():
    """40 independent A/A experiments of 8 seeds: pooled over them, the user-level test rejects most
    same-method pairs, the seed-level test about 5% of the balanced splits (measured at 5.4% +- 0.2% over 400
    experiments of this simulation), and the planted effect is found on most seed subsets."""
    totals: dict[str, list[int]] = {}
    for rep in range(40):
        ranks, shifts = simulate_ranks(300, range(1, 9), run_sd=0.15, user_sd=0.3, rng_seed=rep)
        planted, _ = simulate_ranks(300, range(1, 9), run_sd=0.15, user_sd=0.3, rng_seed=1000 + rep, shifts=shifts,
                                    effect=0.15)
        for row in rejection_counts(_users(ranks), _users(planted), alpha=0.05):
            total = totals.setdefault(row["analysis"], [0, 0])
            total[0] += row["rejections"]
            total[1] += row["n_tests"]
    rate = {k: hits / n for k, (hits, n) in totals.items()}
    assert totals["A/A: balanced seed splits"][1] == 40 * 35  # C(8, 4) / 2 splits each
    assert rate["A/A: same-method seed pairs"] > 0.5
    assert rate["A/A: balanced seed splits"] <= 0.08
    assert rate["planted: power on seed subsets"] > 0.7


def test_calibrate_command_writes_the_table(tmp_path):
    seeds = range(1, 11)
    ranks, shifts = simulate_ranks(1000, seeds, run_sd=0.15, user_sd=0.3, rng_seed=0)
    planted, _ = simulate_ranks(1000, seeds, run_sd=0.15, user_sd=0.3, rng_seed=100, shifts=shifts, effect=0.15)
    runs = [p.parent for p in write_method(tmp_path / "runs", "none", ranks)]
    other = [p.parent for p in write_method(tmp_path / "runs", "p2rec", planted)]
    out = tmp_path / "calibration"
    assert cli(["calibrate", "--runs", *map(str, runs), "--planted", *map(str, other), "--alpha", "0.05",
                "--metrics", "ndcg@10", "--out", str(out)]) == 0
    table = pd.read_csv(out.with_suffix(".csv")).set_index("analysis")
    old, new, power = (table.loc[k] for k in ("A/A: same-method seed pairs", "A/A: balanced seed splits",
                                              "planted: power on seed subsets"))
    assert (old["n_tests"], new["n_tests"], power["n_tests"]) == (45, 126, 252)
    assert new["sampling"] == "all 126 balanced splits" and new["seeds_per_side"] == 5
    assert old["rate"] > 0.5 and new["rate"] <= 0.15 and power["rate"] > 0.9
    assert old["ci_low"] < old["rate"] < old["ci_high"]
    md = out.with_suffix(".md").read_text()
    assert md.startswith("Table: Calibration at alpha = 0.05 (sim/sasrec/none, sim/sasrec/p2rec vs sim/sasrec/none)")
    assert "| NDCG@10 | seeds_ttest | A/A: balanced seed splits | 5 | 126 |" in md
    # the same table from the function; the sample of splits when there are more than max_splits
    sampled = calibrate(runs, metrics=("ndcg@10",), max_splits=50, seed=3)
    assert sampled.loc[1, "n_tests"] == 50
    assert sampled.loc[1, "sampling"] == "50 of 126 balanced splits, sampled with seed 3"


def test_balanced_splits():
    splits, how = balanced_splits([1, 2, 3, 4, 5, 6], 100)
    assert len(splits) == 10 and how == "all 10 balanced splits"
    assert all(len(set(a) | set(b)) == 6 for a, b in splits) and len({frozenset([a, b]) for a, b in splits}) == 10
    odd, _ = balanced_splits([1, 2, 3, 4, 5], 100)  # one seed out each time
    assert len(odd) == 15 and all(len(a) == len(b) == 2 and not set(a) & set(b) for a, b in odd)
    sample, how = balanced_splits(list(range(12)), 40, seed=1)
    assert len(sample) == len({frozenset([a, b]) for a, b in sample}) == 40 and "of 462" in how
    assert sample == balanced_splits(list(range(12)), 40, seed=1)[0]


def test_calibrate_refuses_what_it_cannot_calibrate(tmp_path):
    ranks, _ = simulate_ranks(50, range(1, 5), run_sd=0.1, user_sd=0.3)
    runs = write_method(tmp_path, "none", ranks)
    with pytest.raises(P2RecError, match="at least two runs"):
        calibrate(runs[:1])
    others = write_method(tmp_path, "p2rec", ranks)
    with pytest.raises(P2RecError, match="runs of one method, got sim/sasrec/none, sim/sasrec/p2rec"):
        calibrate(runs + others)
    with pytest.raises(P2RecError, match=r"--planted seeds \[1, 2, 3\] differ"):
        calibrate(runs, others[:3])
    write_run(tmp_path, "sim", "sasrec", "none", 9, ranks[1][:40])
    with pytest.raises(P2RecError, match="different test users"):
        calibrate(runs + [tmp_path / "sim/sasrec/none/seed9"])
    # three seeds: the user-level rows, and the seed-level rows say why they have no test
    table = calibrate(runs[:3], metrics=("hr@10",))
    assert table.loc[1, "n_tests"] == 0 and "needs at least 4 seeds" in table.loc[1, "note"]
    failed = tmp_path / "sim/sasrec/none/seed2/metrics.json"
    failed.write_text(json.dumps({"status": "failed", "reason": "Killed"}))
    with pytest.raises(P2RecError, match=r"seed2/metrics.json: not a finished run \(Killed\)"):
        calibrate(runs)
