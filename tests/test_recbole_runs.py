"""RecBole runs in the suite's run format: the adapter, the worker's ranks and history, the parse-time checks,
``bench recbole-run``, and the experiment's rule end to end with a fake RecBole (no RecBole install needed)."""
from __future__ import annotations

import gzip
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from p2rec import P2RecError
from p2rec.bench import recbole_runs as runs
from p2rec.cli import main as cli
from p2rec.evaluation import metrics_from_ranks
from p2rec.report.runs import load_run
from p2rec.workflow.config import train_settings, validate_config
from p2rec.workflow.experiment import RUN_FILES, run_lineage
from tests.conftest import REPO, run_snakemake, work_path, write_sequence_file

FAKE_WORKER = REPO / "tests" / "fixtures" / "fake_recbole_worker.py"


@pytest.fixture
def tiny_data(tmp_path):
    return write_sequence_file(tmp_path / "tiny" / "sequences.txt", users=25, items=30)


def recbole_config(**overrides) -> dict:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    recbole = yaml.safe_load((REPO / "experiments" / "recbole.yaml").read_text())
    for key, value in {**recbole, **overrides}.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return validate_config(raw)


def settings(config=None, backbone="gru4rec", dataset="beauty") -> dict:
    config = config or recbole_config()
    return runs.run_settings(train_settings(config, dataset, backbone))


def fake_result(users, rng, mask_history=False, epochs=4) -> dict:
    ranks = {stage: {str(u): int(r) for u, r in zip(users, rng.integers(0, 40, len(users)))}
             for stage in ("valid", "test")}
    history = [{"epoch": e, "train_loss": 5.0 / e, "train_seconds": 2.0, "eval_seconds": 0.5,
                "valid": {"hit@10": 0.1 * e, "ndcg@10": 0.05 * e, "hit@5": 0.05, "ndcg@5": 0.02}}
               for e in range(1, epochs + 1)]
    return {"model": "GRU4Rec", "epochs": epochs, "epochs_timed": epochs, "best_epoch": epochs - 1,
            "sec_per_epoch": 2.0, "eval_sec": 0.5, "test_eval_sec": 0.4, "fit_seconds": 10.0,
            "test": {"hit@10": 0.2, "ndcg@10": 0.1}, "training_samples": 130, "torch": "2.13.0",
            "torch_threads": 1, "device": "cpu", "recbole": "1.2.1", "history": history,
            "ranks": {"mask_history": mask_history, **ranks}}


# ------------------------------------------------------------------ the adapter

def test_a_recbole_result_becomes_a_run_folder_whose_metrics_come_from_its_ranks(tmp_path):
    users = np.arange(1, 31)
    result = fake_result(users, np.random.default_rng(0))
    s = settings()
    lineage = {"lineage": "abc", "code_versions": {"recbole": "recbole-x"}, "dataset": "beauty", "backbone": "gru4rec",
               "variant": "recbole", "seed": 2020}
    out = tmp_path / "runs" / "beauty" / "gru4rec" / "recbole" / "seed2020"
    metrics = runs.write_run(result, out, settings=s, seed=2020, data="data/beauty/sequences.txt",
                             recbole={"data_path": "/x", "loss_type": "CE"}, users=users, provenance=lineage,
                             total_seconds=12.5)
    assert all((out / name).is_file() for name in RUN_FILES)
    # ranks round-trip: user -> 0-based rank, sorted by user
    with gzip.open(out / "ranks.csv.gz", "rt", encoding="utf-8") as fh:
        frame = pd.read_csv(fh)
    assert list(frame.columns) == ["user", "rank"] and frame["user"].tolist() == users.tolist()
    assert dict(zip(frame["user"].astype(str), frame["rank"])) == result["ranks"]["test"]
    # metrics recomputed from the ranks agree with p2rec.evaluation's, and with what the tables compute
    test = metrics_from_ranks(frame["rank"].to_numpy(), s["eval"]["ks"])
    assert metrics["test"] == pytest.approx(test) and json.loads((out / "metrics.json").read_text()) == metrics
    valid = metrics_from_ranks(np.array(list(result["ranks"]["valid"].values())), s["eval"]["ks"])
    assert metrics["valid"] == pytest.approx(valid)
    run = load_run(out / "metrics.json")
    assert run.ok and run.score("ndcg@10") == pytest.approx(metrics["test"]["ndcg@10"])
    assert metrics["users"] == 30 and metrics["recbole_test"] == result["test"]  # RecBole's own, kept apart
    timing = json.loads((out / "timing.json").read_text())
    assert (timing["device"], timing["seconds_per_epoch"], timing["epochs"]) == ("cpu", 2.0, 4)
    assert timing["train_seconds"] == 8.0 and timing["total_seconds"] == 12.5
    config = json.loads((out / "config.json").read_text())
    assert config["implementation"] == "recbole" and config["backbone"] == "gru4rec" and config["seed"] == 2020
    assert config["eval"]["mask_history"] is False and config["model"]["recbole_model"] == "GRU4Rec"
    assert "data_path" not in config["recbole"] and config["recbole"]["loss_type"] == "CE"
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4] and history["valid_ndcg@10"].tolist() == pytest.approx(
        [0.05, 0.1, 0.15, 0.2])
    assert {"train_loss", "train_seconds", "eval_seconds", "valid_hr@5", "valid_hr@10"} <= set(history.columns)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["lineage"] == "abc" and provenance["computed"]


def test_the_adapter_refuses_results_it_cannot_trust(tmp_path):
    users = np.arange(1, 11)
    s = settings()
    rng = np.random.default_rng(1)
    short = {**fake_result(users, rng), "epochs": 5}
    del short["epochs_timed"]
    cases = [({k: v for k, v in fake_result(users, rng).items() if k != "ranks"}, "no 'ranks'"),
             (fake_result(users[:-1], rng), "test ranks of 9 users, the split has 10"),
             (fake_result(users, rng, mask_history=True), "mask_history True"),
             (short, "4 epochs in its history, 5 timed")]
    for result, message in cases:
        with pytest.raises(P2RecError, match=message):
            runs.write_run(result, tmp_path / "run", settings=s, seed=1, data="d", users=users)
        assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------ the worker's new parts (fake RecBole objects)

class _Dataset:
    uid_field, iid_field = "user_id", "item_id"

    def __init__(self, users, items):
        self.users, self.items = users, items  # internal id i -> token users[i] / items[i]

    def id2token(self, field, ids):
        table = self.users if field == self.uid_field else self.items
        return np.array([table[i] for i in ids])

    def token2id(self, field, tokens):
        table = self.users if field == self.uid_field else self.items
        return np.array([table.index(t) for t in tokens])


class _Interaction(dict):
    def to(self, device):
        return self

    def __len__(self):
        return len(self["user_id"])


class _Model:
    device = "cpu"

    def __init__(self, scores):
        self.scores = scores

    def eval(self):
        return self

    def full_sort_predict(self, interaction):
        return self.scores[interaction["user_id"]]


class _Loader:
    def __init__(self, dataset, batches):
        self._dataset, self.batches = dataset, batches

    def __iter__(self):
        return iter((b, None, None, None) for b in self.batches)


def test_the_worker_ranks_every_user_pessimistically_masking_as_configured():
    from p2rec.bench import recbole_worker as worker

    ds = _Dataset(["[PAD]", "7", "9"], ["[PAD]", "11", "12", "13", "14"])
    scores = torch.tensor([[0.0] * 5, [5.0, 3.0, 3.0, 1.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    batch = _Interaction(user_id=torch.tensor([1, 2]), item_id=torch.tensor([2, 1]))
    loader = _Loader(ds, [batch])
    model = _Model(scores)
    # user 7: target 12 (3.0) ties 11 and trails 14; user 9: target 11 (1.0) trails 12, 13, 14
    assert worker.user_ranks(model, loader) == {"7": 2, "9": 3}
    masked = worker.user_ranks(model, loader, {"7": [14, 12], "9": [13, 14]})
    assert masked == {"7": 1, "9": 1}  # a history item never outranks, the target itself is never masked
    both = worker.run_ranks(model, loader, loader, {"7": {"valid_input": [14], "test_input": [14]},
                                                    "9": {"valid_input": [13], "test_input": [13]}}, True)
    assert both == {"mask_history": True, "valid": {"7": 1, "9": 2}, "test": {"7": 1, "9": 2}}


def test_the_worker_records_each_epoch_of_recboles_training():
    from p2rec.bench import recbole_worker as worker

    class Trainer:
        def _train_epoch(self, data, epoch):
            return 30.0 / (epoch + 1)  # RecBole's sum over the epoch's batches

        def _valid_epoch(self, data):
            self.epoch = getattr(self, "epoch", 0) + 1
            return [0.1, 0.3, 0.2][self.epoch - 1], {"hit@10": 0.5, "ndcg@10": [0.1, 0.3, 0.2][self.epoch - 1]}

        def fit(self, train_data, valid_data, saved=True, show_progress=False):
            for epoch in range(3):
                self._train_epoch(train_data, epoch)
                self._valid_epoch(valid_data)
            return 0.3, None

        def evaluate(self, data, load_best_model=True, show_progress=False):
            return {"hit@10": 0.4, "ndcg@10": 0.2}

    class Data:
        _dataset = list(range(12))

        def __len__(self):
            return 3  # batches

    result = worker.fit_and_test(Trainer(), Data(), None, None, {"model": "GRU4Rec"})
    assert (result["epochs"], result["best_epoch"], result["training_samples"]) == (3, 2, 12)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert [h["train_loss"] for h in result["history"]] == pytest.approx([10.0, 5.0, 10 / 3])
    assert result["history"][1]["valid"] == {"hit@10": 0.5, "ndcg@10": 0.3}


# ------------------------------------------------------------------ configuration

def test_recbole_variants_are_checked_when_the_config_is_parsed():
    config = recbole_config()
    assert config["variant_catalog"]["recbole"]["runner"] == "recbole"
    assert config["variant_catalog"]["none"]["runner"] == "p2rec"  # the schema's default
    runs.check_config(config)
    bad = recbole_config(backbones=["gru4rec", "fmlprec"], eval={"mode": "sampled"})
    bad["catalog"]["beauty"]["train"] = {"loss": "bce"}
    bad["variant_catalog"]["recbole"]["item_init"] = "x.npy"
    with pytest.raises(P2RecError) as err:
        runs.check_config(bad)
    text = str(err.value)
    for key in ("'backbones[1]': backbone 'fmlprec' has no RecBole model", "'catalog.beauty.train.loss'",
                "'eval.mode'", "'variant_catalog.recbole.item_init'"):
        assert key in text
    assert "backbones[0]" not in text
    # without a RecBole variant in the grid, its backbones are not RecBole's concern
    runs.check_config(recbole_config(backbones=["fmlprec"], variants=["none"]))
    with pytest.raises(P2RecError, match="runner"):
        validate_config({**yaml.safe_load((REPO / "config.yaml").read_text()),
                         "variant_catalog": {"none": {"runner": "librecommender"}}})


def test_a_recbole_runs_lineage_holds_what_recbole_reads_and_its_code_version():
    config = recbole_config()
    ours = run_lineage(config, "beauty", "gru4rec", "none", 2020)
    theirs = run_lineage(config, "beauty", "gru4rec", "recbole", 2020)
    assert "train:gru4rec" in ours["code_versions"] and "recbole" not in ours["code_versions"]
    assert set(theirs["code_versions"]) == {"prepare", "recbole"}
    # p2rec's own backbone parameters and sample regime retrain ours, never RecBole's
    other = recbole_config(backbone_params={"gru4rec": {"dropout": 0.1}}, train={"samples": "sequences"})
    assert run_lineage(other, "beauty", "gru4rec", "none", 2020)["lineage"] != ours["lineage"]
    assert run_lineage(other, "beauty", "gru4rec", "recbole", 2020)["lineage"] == theirs["lineage"]
    # what RecBole does read does change it
    lr = recbole_config(train={"lr": 0.01})
    assert run_lineage(lr, "beauty", "gru4rec", "recbole", 2020)["lineage"] != theirs["lineage"]


# ------------------------------------------------------------------ bench recbole-run with a fake RecBole

def test_bench_recbole_run_trains_restores_and_records_failures(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(runs.STUB_ENV, str(FAKE_WORKER))
    s = settings(recbole_config(train={"epochs": 5}, eval={"mask_history": True}))
    lineage = {"lineage": "l1", "code_versions": {}}
    out = tmp_path / "run"
    argv = ["bench", "recbole-run", "--data", str(tiny_data), "--settings", json.dumps(s), "--seed", "3",
            "--out-dir", str(out), "--provenance", json.dumps(lineage)]
    assert cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["users"] == 25 and metrics["epochs"] == 3
    ranks = pd.read_csv(out / "ranks.csv.gz")
    assert metrics["test"] == pytest.approx(metrics_from_ranks(ranks["rank"].to_numpy(), s["eval"]["ks"]))
    job = json.loads((out / "recbole" / "run" / "job.json").read_text())
    assert job["ranks"] == {"mask_history": True} and job["config_dict"]["loss_type"] == "CE"
    assert job["config_dict"]["valid_metric"] == "NDCG@10" and job["config_dict"]["stopping_step"] == 9
    assert job["config_dict"]["gpu_id"] == "" and job["model"] == "GRU4Rec"
    assert not (out / "recbole" / "data").exists()  # the dataset's copy goes, the log stays
    assert (out / "recbole" / "run" / "worker.log").exists()
    # a published copy with this lineage is restored, RecBole never started
    published = tmp_path / "published"
    published.mkdir()
    for name in RUN_FILES:
        (published / name).write_bytes((out / name).read_bytes())
    monkeypatch.setenv("FAKE_RECBOLE_FAIL", "1")
    restored = tmp_path / "restored"
    assert cli([*argv[:-4], "--out-dir", str(restored), "--provenance", json.dumps(lineage),
                "--restore-from", str(published)]) == 0
    assert (restored / "ranks.csv.gz").read_bytes() == (out / "ranks.csv.gz").read_bytes()
    # a RecBole that fails: one error with its log's tail, or a failed run recorded
    capsys.readouterr()
    assert cli([*argv[:-4], "--out-dir", str(tmp_path / "broken")]) == 2
    assert re.search(r"RecBole GRU4Rec failed \(exit 3\)(.|\n)*No module named 'recbole'", capsys.readouterr().err)
    assert cli([*argv[:-4], "--out-dir", str(tmp_path / "failed"), "--provenance", json.dumps(lineage),
                "--record-failure", "true"]) == 0
    failed = json.loads((tmp_path / "failed" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "exit 3" in failed["reason"]
    assert json.loads((tmp_path / "failed" / "provenance.json").read_text())["lineage"] == "l1"


# ------------------------------------------------------------------ the rule, end to end

def test_the_recbole_experiment_runs_end_to_end_with_a_fake_recbole(tmp_path):
    """experiments/recbole.yaml on a tiny synthetic dataset: ours (prefix samples) and the fake RecBole's runs
    land in the same run layout, the tables and the publish rule take both, nothing is left to do after."""
    experiment = yaml.safe_load((REPO / "experiments" / "recbole.yaml").read_text())
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    catalog = config["catalog"]
    catalog["synthetic"]["synthetic"] = {"seed": 3, "users": 60, "items": 40, "categories": 4}
    config.update({k: v for k, v in experiment.items() if k not in ("train", "eval", "variant_catalog")})
    config["train"].update(experiment["train"], epochs=2, patience=2, batch_size=32)
    config["eval"].update(experiment["eval"])
    config["variant_catalog"].update(experiment["variant_catalog"])
    config.update(datasets=["synthetic"], catalog=catalog, seeds=[1])
    config["experiment"].update(datasets=["synthetic"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {runs.STUB_ENV: str(FAKE_WORKER)}
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", "--quiet", "rules", env=env)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in dry.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["recbole_run"] == 2 and counts["train_backbone"] == 2
    proc = run_snakemake(tmp_path, "--cores", "2", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for backbone in ("gru4rec", "sasrec"):
        theirs = work_path(tmp_path, f"runs/synthetic/{backbone}/recbole/seed1", "recbole")
        ours = work_path(tmp_path, f"runs/synthetic/{backbone}/none/seed1", "recbole")
        assert json.loads((theirs / "config.json").read_text())["implementation"] == "recbole"
        assert json.loads((ours / "config.json").read_text())["train"]["samples"] == "prefixes"
        for run in (theirs, ours):
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["status"] == "ok", metrics
            ranks = pd.read_csv(run / "ranks.csv.gz")
            assert metrics["test"] == pytest.approx(metrics_from_ranks(ranks["rank"].to_numpy(), [5, 10, 20]))
        provenance = json.loads((theirs / "provenance.json").read_text())
        assert set(provenance["code_versions"]) == {"prepare", "recbole"}
    table = pd.read_csv(work_path(tmp_path, "tables/main.csv", "recbole"))
    assert {"none", "recbole"} <= set(table["variant"])
    assert "MIXED" not in work_path(tmp_path, "tables/main.md", "recbole").read_text()  # one protocol for both
    published = tmp_path / "results" / "recbole" / "runs" / "synthetic" / "sasrec" / "recbole" / "seed1"
    assert all((published / name).is_file() for name in RUN_FILES)
    # a lost working copy is restored from the published run (restore_published), RecBole is not started
    run = "runs/synthetic/gru4rec/recbole/seed1"
    shutil.rmtree(work_path(tmp_path, run, "recbole"))
    target = str(work_path(tmp_path, f"{run}/metrics.json", "recbole").relative_to(tmp_path))
    proc = run_snakemake(tmp_path, "--cores", "1", target, env={**env, "FAKE_RECBOLE_FAIL": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = work_path(tmp_path, "logs/recbole/synthetic/gru4rec/recbole/seed1.log", "recbole").read_text()
    assert '"status": "restored"' in log
    for name in RUN_FILES:
        assert (tmp_path / "results" / "recbole" / run / name).read_bytes() == work_path(
            tmp_path, f"{run}/{name}", "recbole").read_bytes()
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(run_snakemake(tmp_path, "-n", "--cores", "1",
                                                                                 target, env=env))
