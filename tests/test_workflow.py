"""The workflow end to end: dry run of the full grid, config errors at parse time, a tiny real run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, run_snakemake


def snakemake(workdir: Path, *args: str, timeout: int = 600):
    return run_snakemake(workdir, *args, timeout=timeout)


def write_config(workdir: Path, **overrides) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for key, value in overrides.items():
        config[key] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def test_dry_run_lists_every_job_of_the_full_grid(tmp_path):
    config = write_config(tmp_path, datasets=["synthetic", "beauty", "yelp", "ml-1m"], seeds=[1, 2, 3])
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    from p2rec.models.registry import BACKBONES

    n_runs = 4 * len(config["backbones"]) * len(config["variants"]) * 3
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train_backbone"] == n_runs
    assert counts["prepare_dataset"] == 4
    assert set(config["backbones"]) <= set(BACKBONES)


def test_narrowing_the_grid_from_the_command_line(tmp_path):
    write_config(tmp_path, seeds=[1, 2])
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--quiet", "rules", "--config", "seeds=[1]")
    assert proc.returncode == 0, proc.stderr
    assert "train_backbone" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("train_backbone"))
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert int(line.split()[1]) == len(config["variants"]) * len(config["backbones"])  # one seed of two


@pytest.mark.parametrize(
    "override, message",
    [
        ({"backbones": ["sasrek"]}, "config key 'backbones[0]': unknown backbone 'sasrek'"),
        ({"datasets": ["beuty"]}, "config key 'datasets[0]': unknown dataset 'beuty'"),
        ({"variants": ["p3rec"]}, "config key 'variants[0]': unknown variant 'p3rec'"),
        ({"trian": {}}, "Additional properties are not allowed ('trian' was unexpected)"),
    ],
)
def test_config_typos_fail_the_dry_run_naming_the_key(tmp_path, override, message):
    write_config(tmp_path, **override)
    proc = snakemake(tmp_path, "-n", "--cores", "1")
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_tiny_workflow_runs_end_to_end(tmp_path):
    catalog = yaml.safe_load((REPO / "config.yaml").read_text())["catalog"]
    catalog["synthetic"]["synthetic"] = {"seed": 3, "users": 80, "items": 50, "categories": 4}
    write_config(tmp_path, datasets=["synthetic"], backbones=["sasrec"], variants=["none"], seeds=[1, 2],
                 catalog=catalog, train={"epochs": 3, "patience": 2, "batch_size": 32})
    proc = snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for seed in (1, 2):
        run = tmp_path / f"work/main/runs/synthetic/sasrec/none/seed{seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "ok" and 0 <= metrics["test"]["ndcg@10"] <= 1
        ranks = pd.read_csv(run / "ranks.csv.gz")
        assert list(ranks.columns) == ["user", "rank"] and len(ranks) == metrics["users"]
        timing = json.loads((run / "timing.json").read_text())
        assert timing["epochs"] >= 1 and timing["device"] == "cpu"
        assert not (run / "checkpoint.pt").exists()
    table = pd.read_csv(tmp_path / "work/main/tables/main.csv")
    assert len(table) >= 1
    stats = json.loads((tmp_path / "work/main/data/synthetic/stats.json").read_text())
    assert stats["users"] > 0 and stats["length"]["min"] >= 5
    # nothing left to do: a second invocation is a no-op
    proc = snakemake(tmp_path, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # a per-dataset training override retrains, but never re-prepares the data
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["catalog"]["synthetic"]["train"] = {"batch_size": 16}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--quiet", "rules")
    jobs = {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert "train_backbone" in jobs and "prepare_dataset" not in jobs, proc.stdout
