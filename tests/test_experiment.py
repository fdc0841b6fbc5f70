"""Experiments: code versions derived from the code, run lineage, publish, restore and status."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from p2rec import P2RecError
from p2rec.cli import main as cli
from p2rec.workflow import versions
from p2rec.workflow.config import validate_config
from p2rec.workflow.experiment import (MANIFEST, RUN_FILES, check_experiment, publish,
                                       results_status, run_lineage, run_restorable)
from tests.conftest import REPO


@pytest.fixture
def config():
    return validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package's sources that the code versions are computed from (so a test can edit it)."""
    root = tmp_path / "p2rec"
    shutil.copytree(versions.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(versions, "ROOT", root)
    return root


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_stage_sources_follow_the_imports():
    names = {p.relative_to(versions.ROOT).as_posix() for p in versions.stage_sources("train", "gru4rec")}
    assert {"training/runner.py", "training/trainer.py", "models/gru4rec.py", "models/losses.py"} <= names
    assert "models/sasrec.py" not in names  # other backbones are not part of a GRU4Rec run
    sft = {p.relative_to(versions.ROOT).as_posix() for p in versions.stage_sources("sft")}
    assert {"llm/sft.py", "llm/prompt.py", "llm/loading.py"} <= sft
    assert not any(n.startswith("models/") for n in sft)
    with pytest.raises(KeyError, match="unknown backbone"):
        versions.stage_sources("train", "nope")


def test_editing_a_backbone_makes_its_runs_stale_but_not_the_llm_stages(config, package_copy):
    plain = run_lineage(config, "synthetic", "gru4rec", "none", 1)["code_versions"]
    llm = run_lineage(config, "synthetic", "sasrec", "p2rec", 1)["code_versions"]
    assert versions.stale_stages(plain) == [] and versions.stale_stages(llm) == []
    _edit(package_copy / "models" / "gru4rec.py")
    assert versions.stale_stages(plain) == ["train:gru4rec"]
    assert versions.stale_stages(llm) == []  # SASRec, stage 0 and the LLM stages are untouched


def test_editing_the_sft_makes_sft_extraction_and_their_runs_stale(config, package_copy):
    plain = run_lineage(config, "synthetic", "gru4rec", "none", 1)["code_versions"]
    cf = run_lineage(config, "synthetic", "gru4rec", "cf_init", 1)["code_versions"]
    llm = run_lineage(config, "synthetic", "gru4rec", "p2rec", 1)["code_versions"]
    _edit(package_copy / "llm" / "sft.py")
    assert versions.stale_stages(llm) == ["extract", "sft"]
    assert versions.stale_stages(plain) == [] and versions.stale_stages(cf) == []


def test_editing_the_report_code_changes_the_report_version_and_makes_no_run_stale(config, package_copy):
    llm = run_lineage(config, "synthetic", "gru4rec", "p2rec", 1)["code_versions"]
    before = versions.stage_version("report")
    _edit(package_copy / "report" / "significance.py")  # imported by the tables, not by any stage
    assert versions.stage_version("report") != before  # the tables' rerun trigger moves
    assert versions.stale_stages(llm) == []
    assert "report" not in llm  # no run's lineage holds it


def test_the_manifest_command_names_the_slice_of_a_narrowed_grid(config):
    from p2rec.workflow.experiment import canonical_command

    paper = {**config, **yaml.safe_load((REPO / "experiments" / "paper.yaml").read_text())}
    base = "snakemake --cores all --configfile experiments/paper.yaml"
    assert canonical_command(paper, REPO) == base
    assert canonical_command({**paper, "train": {**paper["train"], "threads": 1}}, REPO) == base  # runtime only
    narrowed = {**paper, "datasets": ["beauty"], "variants": ["none", "cf_init"]}
    assert canonical_command(narrowed, REPO) == base + """ --config 'datasets=["beauty"]' 'variants=["none","cf_init"]'"""


def test_lineage_changes_with_upstream_settings_only_where_used(config):
    base = {v: run_lineage(config, "synthetic", "gru4rec", v, 1)["lineage"] for v in ("none", "cf_init", "p2rec")}
    config["llm"]["lr"] = 0.001
    changed = {v: run_lineage(config, "synthetic", "gru4rec", v, 1)["lineage"] for v in base}
    assert changed["none"] == base["none"] and changed["cf_init"] == base["cf_init"]
    assert changed["p2rec"] != base["p2rec"]
    assert run_lineage(config, "synthetic", "gru4rec", "none", 2)["lineage"] != base["none"]
    config["train"].update(threads=1, device="cuda", eval_batch_size=2048)  # how it runs, not what it computes
    assert run_lineage(config, "synthetic", "gru4rec", "none", 1)["lineage"] == base["none"]
    config["train"]["lr"] = 0.01
    assert run_lineage(config, "synthetic", "gru4rec", "none", 1)["lineage"] != base["none"]


def test_unknown_experiment_and_undeclared_dataset_are_named(config):
    config["experiment"]["name"] = "nosuch"
    with pytest.raises(P2RecError, match=r"experiment.name.*unknown experiment 'nosuch'.*known: .*main"):
        check_experiment(config, REPO)
    config["experiment"].update(name="main", datasets=["synthetic"])
    config["datasets"] = ["synthetic", "beauty"]
    with pytest.raises(P2RecError, match=r"datasets\[1\].*'beauty' is not declared by experiment 'main'"):
        check_experiment(config, REPO)


def _working_run(work: Path, rel: str, lineage: dict) -> None:
    run = work / rel
    run.mkdir(parents=True)
    for name in RUN_FILES:
        (run / name).write_text("{}")
    (run / "provenance.json").write_text(json.dumps(lineage))


def test_publish_writes_manifest_and_index_and_refuses_a_foreign_folder(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lineage = run_lineage(config, "synthetic", "gru4rec", "none", 1)
    rel = "runs/synthetic/gru4rec/none/seed1"
    _working_run(tmp_path / "work" / "main", rel, lineage)
    files = [f"{rel}/{name}" for name in RUN_FILES]
    manifest = publish(config, files, "results/main/MANIFEST.json", "results/INDEX.md")
    assert manifest["experiment"] == "main" and manifest["files"] == len(files)
    assert set(manifest["code_versions"]) >= {"sft", "extract", "train:gru4rec", "train:sasrec"}
    assert (tmp_path / "results/main" / rel / "provenance.json").is_file()
    assert "[main/](main/)" in (tmp_path / "results/INDEX.md").read_text()
    assert results_status(tmp_path / "results")[0]["current"] == 1
    # published again, even where its MANIFEST went missing (its config.json still names the experiment)
    (tmp_path / "results/main" / MANIFEST).unlink()
    assert publish(config, files, "results/main/MANIFEST.json", "results/INDEX.md")["experiment"] == "main"
    # another slice of the grid: its run is added, the earlier slice's run stays
    other_rel = "runs/synthetic/gru4rec/none/seed2"
    _working_run(tmp_path / "work" / "main", other_rel, run_lineage(config, "synthetic", "gru4rec", "none", 2))
    manifest = publish(config, [f"{other_rel}/{name}" for name in RUN_FILES], "results/main/MANIFEST.json",
                       "results/INDEX.md")
    assert manifest["runs_kept_from_earlier_publishes"] == 1
    assert all((tmp_path / "results/main" / r / "metrics.json").is_file() for r in (rel, other_rel))

    other = json.loads(json.dumps(config))
    other["experiment"]["name"] = "paper"
    other["results_dir"] = "results"
    (tmp_path / "results/paper").mkdir()
    (tmp_path / "results/paper" / MANIFEST).write_text(json.dumps({"experiment": "reproduction"}))
    with pytest.raises(P2RecError, match=r"results/paper/MANIFEST.json: this folder holds experiment 'reproduction'"):
        publish(other, files, "results/paper/MANIFEST.json", "results/INDEX.md")
    (tmp_path / "results/paper" / MANIFEST).unlink()
    (tmp_path / "results/paper/notes.txt").write_text("hand-made\n")
    with pytest.raises(P2RecError, match="folder exists with files but no MANIFEST"):
        publish(other, files, "results/paper/MANIFEST.json", "results/INDEX.md")
    assert sorted(p.name for p in (tmp_path / "results/paper").iterdir()) == ["notes.txt"]


def test_publish_with_a_missing_file_leaves_the_old_folder_as_it_was(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = "runs/synthetic/gru4rec/none/seed1"
    _working_run(tmp_path / "work" / "main", rel, run_lineage(config, "synthetic", "gru4rec", "none", 1))
    files = [f"{rel}/{name}" for name in RUN_FILES]
    publish(config, files, "results/main/MANIFEST.json", "results/INDEX.md")
    before = (tmp_path / "results/main/MANIFEST.json").read_text()
    with pytest.raises(P2RecError, match=r"1 file\(s\) missing under work/main, e.g. tables/main.csv"):
        publish(config, files + ["tables/main.csv"], "results/main/MANIFEST.json", "results/INDEX.md")
    assert (tmp_path / "results/main/MANIFEST.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["INDEX.md", "main"]  # no staging left


def test_a_published_run_is_restored_by_lineage_not_retrained(config, tmp_path, capsys):
    lineage = run_lineage(config, "synthetic", "gru4rec", "none", 1)
    published = tmp_path / "published"
    _working_run(tmp_path, "published", lineage)
    assert run_restorable(published, lineage["lineage"])
    assert not run_restorable(published, "0" * 64)
    out = tmp_path / "out"
    # the data file does not exist: a training attempt would fail, so only a restore can succeed
    code = cli(["train", "--data", str(tmp_path / "missing.txt"), "--settings", "{}", "--seed", "1",
                "--out-dir", str(out), "--provenance", json.dumps(lineage), "--restore-from", str(published)])
    assert code == 0 and "restored" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    (published / "ranks.csv.gz").unlink()
    assert not run_restorable(published, lineage["lineage"])  # incomplete: trained again


def test_restore_from_other_experiments_takes_the_first_matching_copy(config, tmp_path, capsys):
    """experiment.restore_from: another experiment's published run with the same lineage stands in; one with
    another lineage never does; the own folder comes first."""
    from p2rec.workflow import targets
    from p2rec.workflow.experiment import restore_roots

    lineage = run_lineage(config, "synthetic", "gru4rec", "none", 1)
    rel = "runs/synthetic/gru4rec/none/seed1"
    cfg = dict(config, results_dir=str(tmp_path / "results"),
               experiment=dict(config["experiment"], restore_published=True, restore_from=["paper", "other"]))
    assert restore_roots(cfg) == [f"{tmp_path}/results/main", f"{tmp_path}/results/paper", f"{tmp_path}/results/other"]
    assert not targets.restorable(cfg, "synthetic", "gru4rec", "none", 1)
    _working_run(tmp_path / "results" / "paper", rel, dict(lineage, lineage="1" * 64))  # another lineage
    assert not targets.restorable(cfg, "synthetic", "gru4rec", "none", 1)
    _working_run(tmp_path / "results" / "other", rel, lineage)
    assert targets.restorable(cfg, "synthetic", "gru4rec", "none", 1)
    out = tmp_path / "out"
    sources = [str(tmp_path / "results" / name / rel) for name in ("main", "paper", "other")]
    code = cli(["train", "--data", str(tmp_path / "missing.txt"), "--settings", "{}", "--seed", "1", "--out-dir",
                str(out), "--provenance", json.dumps(lineage), *[a for s in sources for a in ("--restore-from", s)]])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["from"] == sources[2]
    assert not restore_roots(dict(config, experiment=dict(config["experiment"], restore_published=False)))


def test_a_stage_record_of_runs_restored_from_another_experiment_comes_from_there(config, tmp_path, monkeypatch):
    """Where every run of an LLM variant is restored from another experiment's folder, its stage records (SFT
    timing, parse evaluation) are read from that folder, and publish copies them from there, instead of the
    workflow recomputing the stages only to time them."""
    from p2rec.workflow import targets
    from p2rec.workflow.experiment import experiment_relative

    monkeypatch.chdir(tmp_path)
    cfg = dict(config, datasets=["synthetic"], backbones=["gru4rec"], variants=["p2rec"], seeds=[1],
               experiment=dict(config["experiment"], restore_published=True, restore_from=["other"]))
    rel_run = "runs/synthetic/gru4rec/p2rec/seed1"
    record = "llm/shared/synthetic/p2rec/parse_eval.json"
    assert targets.parse_eval_files(cfg) == [f"work/main/{record}"]  # nothing restorable: computed here
    _working_run(tmp_path / "results" / "other", rel_run, run_lineage(cfg, "synthetic", "gru4rec", "p2rec", 1))
    assert targets.parse_eval_files(cfg) == [f"work/main/{record}"]  # restorable, but no record published there
    (tmp_path / "results/other" / record).parent.mkdir(parents=True)
    (tmp_path / "results/other" / record).write_text('{"ari": 0.5}')
    assert targets.parse_eval_files(cfg) == [f"results/other/{record}"]
    assert experiment_relative(cfg, f"results/other/{record}") == record
    _working_run(tmp_path / "work" / "main", rel_run, run_lineage(cfg, "synthetic", "gru4rec", "p2rec", 1))
    publish(cfg, [f"{rel_run}/{name}" for name in RUN_FILES] + [record], "results/main/MANIFEST.json",
            "results/INDEX.md")
    assert (tmp_path / "results/main" / record).read_text() == '{"ari": 0.5}'


def test_status_counts_current_and_stale_runs(config, tmp_path, package_copy, capsys):
    current = run_lineage(config, "synthetic", "gru4rec", "none", 1)
    _working_run(tmp_path / "results" / "main", "runs/synthetic/gru4rec/none/seed1", current)
    _working_run(tmp_path / "results" / "main", "runs/synthetic/gru4rec/none/seed2", current)
    legacy = tmp_path / "results" / "archive" / "runs/beauty/sasrec/none/seed1"
    legacy.mkdir(parents=True)
    (legacy / "metrics.json").write_text("{}")
    assert cli(["status", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "archive" in out and out.splitlines()[-1].split()[1:] == ["3", "2", "1"]
    _edit(package_copy / "models" / "gru4rec.py")
    assert cli(["status", "--results", str(tmp_path / "results"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].split()[1:] == ["3", "0", "3"] and "train:gru4rec" in out


def test_pipeline_seeds_give_each_seed_its_own_upstream_stages(config):
    from p2rec.llm.settings import pretrain_settings, sft_settings
    from p2rec.workflow.experiment import pipeline_config, pipeline_name
    from p2rec.workflow.targets import item_init_file

    shared = {s: item_init_file(config, "synthetic", "gru4rec", "p2rec", s) for s in (1, 2)}
    assert shared[1] == shared[2] == "work/main/llm/shared/synthetic/p2rec/item_init_d64.npy"
    assert pipeline_config(config, "shared") is config  # off: the configured seeds, stages shared
    config["pipeline_seeds"] = True
    own = {s: item_init_file(config, "synthetic", "gru4rec", "p2rec", s) for s in (1, 2)}
    assert own[1] == "work/main/llm/seed1/synthetic/p2rec/item_init_d64.npy" and own[1] != own[2]
    assert pipeline_name(config, 2) == "seed2"
    seeded = pipeline_config(config, "seed2")
    assert seeded["pretrain"]["seed"] == 2 and seeded["llm"]["kmeans_seed"] == 2
    assert sft_settings(seeded, "synthetic", "user")["seed"] == 2
    assert sft_settings(seeded, "synthetic", "instance")["instance"]["sample_seed"] == 2
    assert pretrain_settings(seeded, "synthetic") == pretrain_settings(config, "synthetic")  # seed passed apart
    assert config["pretrain"]["seed"] == 0  # the configuration itself is untouched
    one, two = (run_lineage(config, "synthetic", "gru4rec", "p2rec", s) for s in (1, 2))
    assert one["lineage"] != two["lineage"]
    config["pipeline_seeds"] = False
    assert run_lineage(config, "synthetic", "gru4rec", "p2rec", 1)["lineage"] != one["lineage"]


def test_publish_takes_the_rules_input_paths_relative_to_the_experiment(config):
    from p2rec.workflow.experiment import experiment_relative

    assert experiment_relative(config, "work/main/runs/a/metrics.json") == "runs/a/metrics.json"
    assert experiment_relative(config, "results/main/llm/shared/x/p2rec/timing.json") == "llm/shared/x/p2rec/timing.json"
    assert experiment_relative(config, "tables/main.csv") == "tables/main.csv"
    assert experiment_relative(config, "work/mainly/x.json") == "work/mainly/x.json"  # another folder: as given


def test_status_writes_the_index_and_names_a_benchmark_folder_by_its_readme(config, tmp_path, capsys):
    results = tmp_path / "results"
    _working_run(results / "main", "runs/synthetic/gru4rec/none/seed1", run_lineage(config, "synthetic", "gru4rec", "none", 1))
    (results / "bench").mkdir(parents=True)
    (results / "bench" / "README.md").write_text("# Benchmarks side by side\n\nmore\n")
    assert cli(["status", "--results", str(results), "--write-index"]) == 0
    out = capsys.readouterr().out
    assert "Benchmarks side by side (README.md)" in out
    index = (results / "INDEX.md").read_text()
    assert "| [bench/](bench/) | Benchmarks side by side | 0 / 0 |" in index and "[main/](main/)" in index
