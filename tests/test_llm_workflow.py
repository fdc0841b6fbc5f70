"""The LLM stages in the workflow: the default grid (none, cf_init, p2rec, instance) end to end on a tiny
synthetic dataset with a tiny LLM, then `snakemake -n` on copies of the finished run to show what reruns:
a backbone setting never reruns stage 0 or an LLM stage; an LLM setting reruns exactly the LLM stages
that read it and what depends on them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from p2rec.llm.tiny import build_tiny_llm
from tests.conftest import REPO, run_snakemake

VARIANTS = ["none", "cf_init", "p2rec", "instance"]
LLM_RULES = {"convert_llm", "llm_categories", "llm_sft", "llm_extract", "llm_reduce", "llm_parse_eval"}


def snakemake(workdir: Path, *args: str, timeout: int = 900):
    return run_snakemake(workdir, *args, timeout=timeout)


def tiny_config(llm_folder: Path) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalog"]["synthetic"]["synthetic"] = {"seed": 3, "users": 60, "items": 40, "categories": 4}
    config.update(datasets=["synthetic"], backbones=["sasrec"], variants=VARIANTS, seeds=[1],
                  train={"epochs": 2, "patience": 2, "batch_size": 32, "hidden": 16})
    config["pretrain"] = {"backbone": "sasrec", "seed": 0, "train": {"epochs": 3, "patience": 2, "hidden": 16}}
    config["llm"].update(model=str(llm_folder), k=4, max_items=5, epochs=1, batch_size=8,
                         dataset_overrides={"synthetic": {"instance": {"max_samples": 40}}})
    return config


def jobs_to_run(workdir: Path) -> dict[str, int]:
    proc = snakemake(workdir, "-n", "--cores", "1", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_workflow")
    llm = build_tiny_llm(root / "tiny_llm")
    workdir = root / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(llm)))
    proc = snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def edited_copy(finished: Path, dest: Path, edit) -> Path:
    shutil.copytree(finished, dest, symlinks=True)  # copy2 keeps modification times
    config = yaml.safe_load((dest / "config.yaml").read_text())
    edit(config)
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def test_default_grid_runs_end_to_end(finished_run):
    w = finished_run
    for variant in VARIANTS:
        metrics = json.loads((w / f"work/main/runs/synthetic/sasrec/{variant}/seed1/metrics.json").read_text())
        assert metrics["status"] == "ok" and 0 <= metrics["test"]["ndcg@10"] <= 1
        config = json.loads((w / f"work/main/runs/synthetic/sasrec/{variant}/seed1/config.json").read_text())
        assert (config["item_init"] is None) == (variant == "none")
    n_items = json.loads((w / "work/main/data/synthetic/stats.json").read_text())["items"]
    for path in ["work/main/pretrain/shared/synthetic/item_init_d16.npy",
                 "work/main/llm/shared/synthetic/p2rec/item_init_d16.npy",
                 "work/main/llm/shared/synthetic/instance/item_init_d16.npy"]:
        table = np.load(w / path)
        assert table.shape == (n_items + 1, 16) and np.all(table[0] == 0)
        assert table[1:].std() == pytest.approx(0.02, rel=1e-3)
    user = json.loads((w / "work/main/llm/shared/synthetic/p2rec/timing.json").read_text())
    inst = json.loads((w / "work/main/llm/shared/synthetic/instance/timing.json").read_text())
    assert user["samples"] == user["users"] == 60 and user["extrapolated"] is False
    assert inst["samples"] == 40 and inst["extrapolated"] is True and inst["full_epoch"]["samples"] > 40
    assert np.load(w / "work/main/llm/shared/synthetic/categories/g_u.npy").shape == (60, 4)
    assert np.load(w / "work/main/llm/shared/synthetic/p2rec/item_hidden.npy").shape == (n_items + 1, 32)
    rows = (w / "work/main/tables/categories.csv").read_text().splitlines()
    assert rows[0] == "dataset,variant,comparison,items,ari,nmi" and len(rows) == 1 + 2 * 3
    assert not list(w.glob("work/main/llm/**/checkpoint.pt"))
    assert jobs_to_run(w) == {}  # nothing left to do


def test_backbone_setting_never_reruns_an_llm_stage(finished_run, tmp_path):
    def edit(config):
        config["train"]["lr"] = 0.002
        config["backbone_params"] = {"sasrec": {"num_layers": 1}}
        config["eval"] = {"ks": [5, 10]}

    jobs = jobs_to_run(edited_copy(finished_run, tmp_path / "w", edit))
    assert jobs.get("train_backbone") == len(VARIANTS)
    assert not (LLM_RULES | {"pretrain_backbone", "cf_init_table"}) & set(jobs), jobs


def test_backbone_hidden_size_reruns_only_the_reduction(finished_run, tmp_path):
    jobs = jobs_to_run(edited_copy(finished_run, tmp_path / "w", lambda c: c["train"].update(hidden=8)))
    assert jobs.get("llm_reduce") == 2 and jobs.get("cf_init_table") == 1 and jobs.get("train_backbone") == 4
    assert not {"llm_sft", "llm_extract", "llm_categories", "pretrain_backbone"} & set(jobs), jobs


def test_llm_setting_reruns_exactly_the_llm_stages_and_their_dependants(finished_run, tmp_path):
    jobs = jobs_to_run(edited_copy(finished_run, tmp_path / "lr", lambda c: c["llm"].update(lr=0.001)))
    assert {k: jobs.get(k) for k in ("llm_sft", "llm_extract", "llm_reduce", "llm_parse_eval", "train_backbone")} == \
        {"llm_sft": 2, "llm_extract": 2, "llm_reduce": 2, "llm_parse_eval": 2, "train_backbone": 2}
    assert not {"llm_categories", "pretrain_backbone", "cf_init_table", "convert_llm"} & set(jobs), jobs
    # k changes the categories too; the instance budget only the instance branch
    jobs = jobs_to_run(edited_copy(finished_run, tmp_path / "k", lambda c: c["llm"].update(k=3)))
    assert jobs.get("llm_categories") == 1 and jobs.get("llm_sft") == 2 and jobs.get("train_backbone") == 2
    jobs = jobs_to_run(edited_copy(finished_run, tmp_path / "budget",
                                   lambda c: c["llm"]["dataset_overrides"]["synthetic"]["instance"].update(max_samples=30)))
    assert jobs.get("llm_sft") == 1 and jobs.get("train_backbone") == 1 and "llm_categories" not in jobs
    # options that cannot change a result trigger nothing
    jobs = jobs_to_run(edited_copy(finished_run, tmp_path / "runtime",
                                   lambda c: c["llm"].update(checkpoint_every=7, extract_batch_size=5, threads=1)))
    assert not LLM_RULES & set(jobs), jobs
