"""Paper tables, plots, failure records, collect/rebuild and the Snakemake report.

The fixture runs under tests/fixtures/runs/ are hand-made (8 and 6 users, ranks chosen by hand):
toy/{sasrec,gru4rec} with variants none, cf_init, p2rec and seeds 1-2, mini/sasrec with none and p2rec,
seed 1; toy/gru4rec/cf_init failed on both seeds, toy/gru4rec/p2rec failed on seed 2, mini/sasrec/cf_init
does not exist.
The expected outputs under tests/fixtures/expected/ were reviewed by hand; regenerate them with
`P2REC_UPDATE_EXPECTED=1 pytest tests/test_tables.py -k expected` after an intended format change.
The fixture runs have no provenance.json; the tables built from them here treat every run as current
(``staleness``) except where a test checks the staleness marks.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from p2rec.cli import main as cli
from p2rec.evaluation import per_user_metric
from p2rec.report.stats import holm
from p2rec.report.tables import build_tables, llm_text, load_run, report_context, report_settings, write_failed_run
from tests.conftest import REPO, run_snakemake

FIXTURES = REPO / "tests" / "fixtures"
RUNS = FIXTURES / "runs"
EXPECTED = FIXTURES / "expected"
MISSING = RUNS / "mini" / "sasrec" / "cf_init" / "seed1" / "metrics.json"
CONTEXT = {
    "grid": {"datasets": ["toy", "mini"], "backbones": ["sasrec", "gru4rec"], "variants": ["none", "cf_init", "p2rec"]},
    "report": {"bootstrap_samples": 500},
    "llm": {"model": "SmolLM2-135M-Instruct", "lora": {"r": 8, "alpha": 16}, "lr": 0.0002, "cache_dir": "/x"},
}
COMPARED = ["main.md", "main.tex", "robustness.md", "efficiency.md", "verdict.md"]


def current(run) -> str:
    """Staleness hook of these tests: every run counts as made by the current checkout."""
    return ""


def fixture_metrics() -> list[Path]:
    return sorted(RUNS.glob("*/*/*/seed*/metrics.json")) + [MISSING]


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    build_tables(fixture_metrics(), out, CONTEXT, sft_timings=sorted(FIXTURES.glob("llm/*/*/*.json")),
                 stage0_timings=[FIXTURES / "pretrain/toy/run/timing.json"], staleness=current)
    return out


def _cells(md: str) -> dict[tuple[str, str], list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[(cells[0], cells[1])] = dict(zip(head, cells))
    return out


def test_tables_match_the_expected_files(tables):
    if os.environ.get("P2REC_UPDATE_EXPECTED"):
        EXPECTED.mkdir(parents=True, exist_ok=True)
        for name in COMPARED + ["significance.csv"]:
            shutil.copyfile(tables / name, EXPECTED / name)
    for name in COMPARED:
        assert (tables / name).read_text() == (EXPECTED / name).read_text(), name
    got = pd.read_csv(tables / "significance.csv")
    want = pd.read_csv(EXPECTED / "significance.csv")
    pd.testing.assert_frame_equal(got, want, rtol=1e-5)
    # the default test is the seed-level one: significance.csv and verdict.csv are the same rows
    pd.testing.assert_frame_equal(pd.read_csv(tables / "verdict.csv"), got)


def test_main_table_marks_best_runner_up_significance_and_improvement(tables):
    cells = _cells((tables / "main.md").read_text())
    row = cells[("toy", "sasrec")]
    assert row["NDCG@10 p2rec"] == r"**0.5617**\*"
    assert row["NDCG@10 cf_init"] == "<u>0.3311</u>"
    assert row["NDCG@10 none"] == "0.3206"
    assert row["HR@10 p2rec"] == "**0.8750**"  # best but not significant: no marker
    # improvement = mean(p2rec) / mean(none) - 1 on the means over seeds
    assert row["NDCG@10 Improv."] == "+75.17%"
    sig = pd.read_csv(tables / "significance.csv")
    assert list(sig.columns[:14]) == ["dataset", "backbone", "metric", "treatment", "comparator", "test", "statistic",
                                      "p_raw", "p_holm", "effect", "ci_low", "ci_high", "n_users", "n_seeds"]
    # Holm within each dataset x backbone x metric family, markers exactly on the significant comparisons
    # against the baseline (the comparisons against cf_init are in the verdict table only)
    for _, family in sig.groupby(["dataset", "backbone", "metric"]):
        np.testing.assert_allclose(family["p_holm"], holm(family["p_raw"]), rtol=1e-5)
        assert (family["family_size"] == family["p_raw"].notna().sum()).all()
    assert sig["significant"].tolist() == (sig["p_holm"] < 0.05).tolist()
    marked = sum(line.count(r"\*") for line in (tables / "main.md").read_text().splitlines() if line.startswith("| "))
    assert marked == int((sig["significant"] & (sig["comparator"] == "none")).sum()) == 1
    assert "†" not in (tables / "main.md").read_text()  # every run current here: no staleness mark


def _seed_means(backbone: str, variant: str, metric: str = "ndcg@10", seeds=(1, 2)) -> np.ndarray:
    return np.array([per_user_metric(pd.read_csv(RUNS / "toy" / backbone / variant / f"seed{s}" / "ranks.csv.gz")
                                     ["rank"].to_numpy(), metric).mean() for s in seeds])


def test_significance_is_the_paired_ttest_over_seeds_on_per_seed_means(tables):
    t, c = _seed_means("sasrec", "p2rec"), _seed_means("sasrec", "none")
    ref = stats.ttest_rel(t, c)
    sig = pd.read_csv(tables / "significance.csv")
    row = sig[(sig.dataset == "toy") & (sig.backbone == "sasrec") & (sig.metric == "ndcg@10") & (sig.treatment == "p2rec")
              & (sig.comparator == "none")]
    assert row["test"].item() == "seeds_ttest" and row["df"].item() == 1
    assert row["statistic"].item() == pytest.approx(ref.statistic, rel=1e-5)
    assert row["p_raw"].item() == pytest.approx(ref.pvalue, rel=1e-5)
    d = t - c
    assert row["effect"].item() == pytest.approx(d.mean() / c.mean(), rel=1e-5)
    ci = ref.confidence_interval(0.95)
    assert (row["ci_low"].item(), row["ci_high"].item()) == pytest.approx((ci.low / c.mean(), ci.high / c.mean()), rel=1e-5)
    assert (row["n_users"].item(), row["n_seeds"].item(), row["seeds"].item()) == (8, 2, "1 2")
    # one finished seed on a side (toy/gru4rec/p2rec lost seed 2): effect over users only, no test, no mark
    one = sig[(sig.dataset == "toy") & (sig.backbone == "gru4rec") & (sig.metric == "ndcg@10")].iloc[0]
    assert one["test"] == "users only" and pd.isna(one["p_raw"]) and not one["significant"] and one["n_seeds"] == 1
    assert one["ci_low"] < one["effect"] < one["ci_high"]
    cells = _cells((tables / "main.md").read_text())
    assert r"\*" not in cells[("toy", "gru4rec")]["NDCG@10 p2rec"] + cells[("mini", "sasrec")]["NDCG@10 p2rec"]
    verdict = (tables / "verdict.md").read_text()
    assert "users only | n/a | n/a | n/a |" in verdict


def test_within_pair_users_analysis_is_the_old_test_and_marks_nothing(tables):
    """report.test: users_ttest keeps the user-level test (each user's metric averaged over seeds, paired t-test
    over users) in significance.csv, labelled, and never marks the main table; the verdicts stay seed-level."""
    out = tables.parent / "users"
    build_tables(fixture_metrics(), out, dict(CONTEXT, report={"bootstrap_samples": 500, "test": "users_ttest"}),
                 staleness=current)

    def user_means(variant):
        frames = [pd.read_csv(RUNS / "toy" / "sasrec" / variant / f"seed{s}" / "ranks.csv.gz").set_index("user")["rank"]
                  for s in (1, 2)]
        return np.mean([per_user_metric(f.to_numpy(), "ndcg@10") for f in frames], axis=0)

    ref = stats.ttest_rel(user_means("p2rec"), user_means("none"))
    sig = pd.read_csv(out / "significance.csv")
    row = sig[(sig.dataset == "toy") & (sig.backbone == "sasrec") & (sig.metric == "ndcg@10") & (sig.treatment == "p2rec")
              & (sig.comparator == "none")]
    assert row["test"].item() == "users_ttest" and row["interval"].item() == "bootstrap (users)"
    assert row["p_raw"].item() == pytest.approx(ref.pvalue, rel=1e-5)
    md = (out / "main.md").read_text()
    assert r"\*" not in md and "No significance marks: report.test = users_ttest is a within-pair (users) analysis" in md
    pd.testing.assert_frame_equal(pd.read_csv(out / "verdict.csv"), pd.read_csv(tables / "verdict.csv"))


def test_failed_and_missing_runs_render_as_failed_with_reasons(tables):
    md = (tables / "main.md").read_text()
    cells = _cells(md)
    assert cells[("toy", "gru4rec")]["HR@10 cf_init"] == "failed [1]"
    assert cells[("toy", "gru4rec")]["HR@10 p2rec"].endswith("[2]")  # one seed failed: mean of the other
    assert cells[("mini", "sasrec")]["NDCG@10 cf_init"] == "failed [3]"
    assert "[1] toy / gru4rec / cf_init: failed (seed 1: RuntimeError: CUDA out of memory; seed 2:" in md
    assert "[2] toy / gru4rec / p2rec: 1 of 2 seeds failed, mean over the others (seed 2: Killed" in md
    assert "[3] mini / sasrec / cf_init: failed (seed 1: no result (metrics.json not found))" in md
    tex = (tables / "main.tex").read_text()
    assert r"failed\textsuperscript{[1]}" in tex and "CUDA out of memory" in tex
    long = pd.read_csv(tables / "main.csv")
    failed = long[(long.backbone == "gru4rec") & (long.variant == "cf_init")]
    assert set(failed["status"]) == {"failed"} and failed["mean"].isna().all()


def test_captions_come_from_the_configuration(tables):
    md = (tables / "main.md").read_text()
    for text in ("means over seeds 1, 2 (toy); 1 (mini)", "full ranking over all items", "items of the input sequence masked",
                 "two-sided paired t-test over seeds on per-seed means", "every LLM variant vs 'cf_init'",
                 "Holm correction within each dataset x backbone x metric family, up to 3 comparisons", "alpha = 0.05",
                 "a comparison with one seed gets its effect only, never a mark",
                 "LLM: SmolLM2-135M-Instruct (lora.r=8, lora.alpha=16, lr=0.0002)"):
        assert text in md, text
    assert "cache_dir" not in md
    context = dict(CONTEXT, report={"bootstrap_samples": 50, "test": "permutation", "correction": "none",
                                    "alpha": 0.01, "baseline": "cf_init", "treatment": "absent"})
    context["llm"] = {}
    out_md = Path(build_tables(fixture_metrics(), tables.parent / "other", context, staleness=current)["main.md"]).read_text()
    # 'permutation' is the earlier name of the within-pair (users) permutation test
    assert "paired permutation test" in out_md and "no multiple-comparison correction" in out_md
    assert "report.test = users_permutation" in out_md
    assert "alpha = 0.01" in out_md and "every variant vs 'cf_init'" in out_md and "LLM" not in out_md
    assert "Improv." not in out_md  # the treatment is not in the table: no improvement column


def test_llm_caption_is_independent_of_key_order_and_lists_only_the_tables_dataset_overrides():
    llm = {"model": "packaged", "lr": 0.0002, "lora": {"r": 8, "alpha": 16}, "k": 32,
           "dataset_overrides": {"synthetic": {"instance": {"max_samples": 500}},
                                 "beauty": {"instance": {"max_samples": 22363}}}}
    shuffled = json.loads(json.dumps(llm, sort_keys=True))  # the workflow passes the context as sorted JSON
    text = llm_text(llm, ["beauty"])
    assert text == llm_text(shuffled, ["beauty"])
    assert "(k=32, lora.r=8, lora.alpha=16, lr=0.0002, dataset_overrides.beauty.instance.max_samples=22363)" in text
    assert "synthetic" not in text
    assert "dataset_overrides.synthetic.instance.max_samples=500" in llm_text(llm)  # no table datasets given: all
    # sampled protocol and history masking off are read from the runs' resolved settings
    from p2rec.report.tables import protocol_text

    assert "99 sampled negatives" in protocol_text([{"mode": "sampled", "n_sampled": 99, "mask_history": True}])
    assert "not masked" in protocol_text([{"mode": "full", "mask_history": False}])
    assert "MIXED" in protocol_text([{"mode": "full"}, {"mode": "sampled"}])


def test_latex_structure(tables):
    verdicts = (tables / "verdict.tex").read_text().split(r"\end{table}")[:-1]
    assert len(verdicts) == 3  # one per dataset x backbone
    for name, tex in [("main.tex", (tables / "main.tex").read_text()), ("robustness.tex", (tables / "robustness.tex").read_text())] \
            + [("verdict.tex", t.strip() + "\n" + r"\end{table}") for t in verdicts]:
        assert tex.startswith(r"\begin{table}") and tex.rstrip().endswith(r"\end{table}"), name
        assert tex.count("{") == tex.count("}")
        assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
        spec = tex.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0].replace("|", "")
        body = tex.split(r"\hline", 2)[2].split(r"\end{tabular}")[0]
        for line in body.splitlines():
            if line.endswith(r"\\"):
                assert line.count(" & ") + 1 == len(spec), line
        assert "_" not in tex.replace(r"\_", "") and "%" not in tex.replace(r"\%", "")
        assert "?" not in tex, name  # no character lost to the ASCII fallback


def test_latex_compiles_in_a_minimal_document(tables, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: LaTeX structure is checked by test_latex_structure only")
    for name in ("main.tex", "robustness.tex", "verdict.tex"):
        shutil.copyfile(tables / name, tmp_path / name)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\begin{document}\n\\input{main.tex}\n"
                                      "\\input{robustness.tex}\n\\input{verdict.tex}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_efficiency_and_robustness_tables(tables):
    eff = (tables / "efficiency.md").read_text()
    assert "## LLM fine-tuning (SFT)" in eff
    rows = pd.read_csv(tables / "efficiency.csv")
    sft = rows[rows.stage == "sft"].set_index("variant")
    # instance: measured on a sample, the full epoch extrapolated (the SFT stage's full_epoch record)
    assert sft.loc["instance", ["samples", "epoch_samples", "epoch_wall_s"]].tolist() == [40, 1200, 1898.7]
    assert sft.loc["instance", "extrapolated"] == True  # noqa: E712 (read back from CSV)
    # p2rec: a flat record (the measurement is the epoch), joined with its extraction timing
    assert sft.loc["p2rec", "s_per_sample"] == pytest.approx(12.5 / 8)
    assert sft.loc["p2rec", "epoch_wall_s"] == 12.5 and sft.loc["p2rec", "extract_s"] == 3.25
    assert pd.isna(sft.loc["instance", "extract_s"])
    train = rows[(rows.stage == "train") & (rows.backbone == "gru4rec") & (rows.variant == "p2rec")]
    assert train["seeds"].item() == 1 and train["seconds_per_epoch"].item() == pytest.approx(0.55)
    rob = pd.read_csv(tables / "robustness.csv")
    row = rob[(rob.backbone == "sasrec") & (rob.dataset == "toy") & (rob.metric == "ndcg@10") & (rob.treatment == "p2rec")]
    per_seed = {}
    for variant in ("p2rec", "none"):
        per_seed[variant] = [per_user_metric(pd.read_csv(RUNS / "toy/sasrec" / variant / f"seed{s}/ranks.csv.gz")["rank"]
                                             .to_numpy(), "ndcg@10").mean() for s in (1, 2)]
    assert row["p_raw"].item() == pytest.approx(stats.ttest_rel(per_seed["p2rec"], per_seed["none"]).pvalue, rel=1e-5)
    assert row["wins"].item() == 2
    single = rob[rob.dataset == "mini"]
    assert single["p_raw"].isna().all() and (single["n_seeds"] == 1).all()


def test_wall_time_per_dataset_sums_every_stage_from_its_timing_file(tables):
    rows = pd.read_csv(tables / "efficiency.csv")
    total = rows[rows.stage == "total"].set_index("dataset")
    run_seconds = [json.loads(p.with_name("timing.json").read_text())["total_seconds"]
                   for p in sorted(RUNS.glob("toy/*/*/seed*/metrics.json"))
                   if json.loads(p.read_text()).get("status", "ok") == "ok"]
    sft = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("llm/toy/*/timing.json"))]
    extraction = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("llm/toy/*/extract_timing.json"))]
    toy = total.loc["toy"]
    assert toy["stage0_s"] == 7.5 and toy["runs"] == len(run_seconds)
    assert toy["runs_s"] == pytest.approx(sum(run_seconds))
    assert toy["sft_jobs"] == len(sft) and toy["sft_s"] == pytest.approx(sum(t.get("wall_s", t.get("train_s")) for t in sft))
    assert toy["extraction_s"] == pytest.approx(sum(t.get("wall_s", t.get("extract_s")) for t in extraction))
    assert toy["total_s"] == pytest.approx(7.5 + sum(run_seconds) + toy["sft_s"] + toy["extraction_s"])
    assert pd.isna(total.loc["mini", "stage0_s"]) and total.loc["mini", "total_s"] == pytest.approx(total.loc["mini", "runs_s"])
    assert "## Wall time per dataset" in (tables / "efficiency.md").read_text()


def test_with_pipeline_seeds_the_efficiency_captions_say_the_stage_records_are_the_first_seeds(tables, tmp_path):
    from p2rec.report.efficiency import PIPELINE_SEEDS_NOTE

    assert PIPELINE_SEEDS_NOTE not in (tables / "efficiency.md").read_text()  # shared stages: nothing to say
    build_tables(fixture_metrics(), tmp_path, {**CONTEXT, "pipeline_seeds": True},
                 sft_timings=sorted(FIXTURES.glob("llm/*/*/*.json")),
                 stage0_timings=[FIXTURES / "pretrain/toy/run/timing.json"], staleness=current)
    text = (tmp_path / "efficiency.md").read_text()
    assert text.count(PIPELINE_SEEDS_NOTE) == 2  # the SFT table and the wall-time table
    assert "counts stage 0, the SFT and the extraction once, not once per seed" in text
    assert report_context(yaml.safe_load((REPO / "experiments" / "beauty-pipeline-seeds.yaml").read_text())
                          | {"eval": {}, "report": {}})["pipeline_seeds"] is True


def test_new_variants_appear_without_code_change_and_collect_rebuilds(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    for seed in (1, 2):  # a new method: just its run folders
        shutil.copytree(runs / "toy/sasrec/p2rec" / f"seed{seed}", runs / "toy/sasrec/textemb" / f"seed{seed}")
    (runs / "toy/sasrec/p2rec/seed1/checkpoint.pt").write_bytes(b"x" * 100)  # not compact: never collected
    llm = tmp_path / "llm"
    shutil.copytree(FIXTURES / "llm", llm)
    collected = tmp_path / "collected"
    assert cli(["collect", "--runs", str(runs), "--out", str(collected), "--llm", str(llm),
                "--pretrain", str(FIXTURES / "pretrain")]) == 0
    assert (collected / "toy/sasrec/textemb/seed2/ranks.csv.gz").exists()
    assert (collected / "pretrain/toy/run/timing.json").exists()
    assert not (collected / "toy/sasrec/p2rec/seed1/checkpoint.pt").exists()
    assert (collected / "llm/toy/instance/timing.json").exists() and (collected / "llm/toy/p2rec/extract_timing.json").exists()
    out = tmp_path / "tables"
    assert cli(["tables", "--from", str(collected), "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    cells = _cells((out / "main.md").read_text())
    head = list(cells[("toy", "sasrec")])
    # baseline first, treatment last, any other variant between them
    assert head[2:6] == ["HR@10 none", "HR@10 cf_init", "HR@10 textemb", "HR@10 p2rec"]
    assert cells[("toy", "sasrec")]["HR@10 textemb"] == cells[("toy", "sasrec")]["HR@10 p2rec"]
    # the fixture runs have no provenance.json: every finished cell is marked as possibly made by other code
    assert cells[("toy", "sasrec")]["HR@10 none"].endswith("†") and "† : from runs made with code other" in \
        (out / "main.md").read_text()
    assert cells[("mini", "sasrec")]["HR@10 cf_init"] == "—"  # never configured, never found: not a failure
    assert "instance" in (out / "efficiency.md").read_text()
    totals = pd.read_csv(out / "efficiency.csv").query("stage == 'total'").set_index("dataset")
    assert totals.loc["toy", "stage0_s"] == 7.5  # the collected stage-0 timing file
    for name in ("toy/scores.png", "toy/convergence.pdf", "mini/scores.pdf", "sft_efficiency.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000, name
    # with a configuration the grid is what it names: other backbones left out, absent runs failed
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalog"].update(toy={"source": "synthetic"}, mini={"source": "synthetic"})
    config.update(datasets=["toy", "mini"], backbones=["sasrec"], seeds=[1, 2], variants=["none", "p2rec"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out2 = tmp_path / "tables2"
    config.update(datasets=["toy"])  # first a one-dataset grid: its plots and SFT rows only
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli(["tables", "--from", str(collected), "--out", str(out2), "--config", str(tmp_path / "config.yaml"),
                "--plots", str(tmp_path / "plots2")]) == 0
    assert (tmp_path / "plots2/toy/scores.png").exists() and not (tmp_path / "plots2/mini").exists()
    eff = pd.read_csv(out2 / "efficiency.csv")
    assert set(eff.loc[eff.stage == "sft", "variant"]) == {"p2rec"}  # instance is not in this grid
    config.update(datasets=["toy", "mini"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli(["tables", "--from", str(collected), "--out", str(out2), "--config", str(tmp_path / "config.yaml")]) == 0
    md = (out2 / "main.md").read_text()
    cells = _cells(md)
    assert set(cells) == {("toy", "sasrec"), ("mini", "sasrec")}
    assert "textemb" not in md and "cf_init" not in md
    assert "mini / sasrec / none: 1 of 2 seeds failed, mean over the others (seed 2: no result" in md


def test_tables_refuse_bad_input_naming_the_file(tmp_path):
    run = tmp_path / "d/b/v/seed1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{not json")
    assert cli(["gather", "--metrics", str(run / "metrics.json"), "--out-dir", str(tmp_path / "t")]) == 2
    (run / "metrics.json").write_text(json.dumps({"status": "ok", "test": {}}))
    from p2rec import P2RecError

    with pytest.raises(P2RecError, match=r"ranks\.csv\.gz"):
        build_tables([run / "metrics.json", RUNS / "toy/sasrec/none/seed1/metrics.json"], tmp_path / "t",
                     {"grid": {"variants": ["none", "v"]}})
    with pytest.raises(P2RecError, match="report.alpha"):
        report_settings({"alpha": 2})
    with pytest.raises(P2RecError, match="run layout"):
        load_run(tmp_path / "metrics.json")


def test_train_records_a_failure_instead_of_stopping(tmp_path, capsys):
    from p2rec.workflow.config import train_settings, validate_config

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    settings = json.dumps(train_settings(config, "synthetic", "sasrec"))
    out = tmp_path / "runs/synthetic/sasrec/none/seed3"
    args = ["train", "--data", str(tmp_path / "absent.txt"), "--settings", settings, "--seed", "3", "--out-dir", str(out)]
    assert cli(args + ["--record-failure", "false"]) == 2  # off: the error stops the job
    assert not (out / "metrics.json").exists()
    assert cli(args + ["--record-failure"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "absent.txt" in metrics["reason"]
    for name in ("ranks.csv.gz", "timing.json", "config.json", "history.csv"):
        assert (out / name).exists(), name
    run = load_run(out / "metrics.json")
    assert not run.ok and "absent.txt" in run.reason
    write_failed_run(out, 3, "x" * 5000)
    assert len(json.loads((out / "metrics.json").read_text())["reason"]) <= 2000


def test_report_context_reads_the_configuration():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    from p2rec.workflow.config import validate_config

    context = report_context(validate_config(config))
    assert context["grid"]["variants"] == config["variants"]
    # the earlier names of the user-level tests read as what they always were: within-pair analyses
    assert context["report"]["test"] in ("seeds_ttest", "users_ttest") and context["report"]["correction"] == "holm"
    assert report_settings({})["test"] == "seeds_ttest" and report_settings({"test": "ttest"})["test"] == "users_ttest"
    assert report_settings({})["control"] == "cf_init" and report_settings({})["power"] == 0.8
    assert set(context["eval"]) <= {"mode", "mask_history", "n_sampled"}


# ------------------------------------------------------------------ one tiny workflow run, several assertions
@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalog"]["synthetic"]["synthetic"] = {"seed": 3, "users": 60, "items": 40, "categories": 4}
    config["variant_catalog"]["plain"] = {"item_init": None, "description": "a second random-init variant"}
    config["variant_catalog"]["broken"] = {"item_init": "bad_{hidden}.npy", "description": "wrong-shape table"}
    config["report"].update(treatment="plain", bootstrap_samples=200)
    config.update(datasets=["synthetic"], backbones=["sasrec"], variants=["none", "plain", "broken"], seeds=[1],
                  train={"epochs": 2, "patience": 2, "batch_size": 32})
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (work / "work/main").mkdir(parents=True)  # item_init templates name files in the experiment's working folder
    np.save(work / "work/main/bad_64.npy", np.zeros((3, 5), dtype=np.float32))
    proc = run_snakemake(work, "--cores", "2", "--resources", "gpu=2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = run_snakemake(work, "--report", "report.html", timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    return work


@pytest.mark.slow
def test_workflow_tables_plots_and_report(workflow_run):
    work = workflow_run
    md = (work / "work/main/tables/main.md").read_text()
    cells = _cells(md)[("synthetic", "sasrec")]
    assert cells["NDCG@10 broken"] == "failed [1]" and "item-embedding shape" in md
    assert cells["NDCG@10 plain"] == cells["NDCG@10 none"]  # same seed, same random init: identical runs
    sig = pd.read_csv(work / "work/main/tables/significance.csv")
    # one seed: the effect over users only (zero: identical runs), no test
    assert len(sig) == 2 and (sig["test"] == "users only").all() and sig["p_raw"].isna().all()
    assert (sig["effect"] == 0).all() and (sig["n_users"] == 60).all() and (sig["n_seeds"] == 1).all()
    for name in ("main.tex", "robustness.md", "efficiency.csv"):
        assert (work / "work/main/tables" / name).exists()
    for kind in ("scores", "convergence"):
        for fmt in ("png", "pdf"):
            assert (work / f"work/main/plots/synthetic/{kind}.{fmt}").stat().st_size > 1000
    html = (work / "report.html").read_text(errors="replace")
    assert "Holm correction" in html and "convergence.png" in html and "significance.csv" in html
    # editing only the report block rebuilds tables, never retrains
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["report"]["alpha"] = 0.01
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(work, "-n", "--quiet", "rules", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert "paper_tables" in jobs and "train_backbone" not in jobs and "pretrain_backbone" not in jobs


def test_bench_summary_reports_per_seed_scores_and_user_level_ttests(tmp_path):
    """`p2rec bench summary` on the fixture runs: one row per run, and its 'mean over seeds' p-value is
    scipy's paired t-test on each user's NDCG@10 averaged over both seeds."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs").symlink_to(RUNS)
    (results / "llm").symlink_to(FIXTURES / "llm")
    out = tmp_path / "summary"
    subprocess.run([sys.executable, "-m", "p2rec", "bench", "summary", "--dataset", "toy", "--backbone",
                    "sasrec", "--results", str(results), "--out", str(out)], check=True, capture_output=True)
    per_seed = pd.read_csv(out / "toy_sasrec.csv")
    assert sorted(zip(per_seed["variant"], per_seed["seed"])) == [
        ("cf_init", 1), ("cf_init", 2), ("none", 1), ("none", 2), ("p2rec", 1), ("p2rec", 2)]
    tests = pd.read_csv(out / "toy_sasrec_tests.csv")
    row = tests[(tests["comparator"] == "none") & (tests["metric"] == "ndcg@10") & (tests["seeds"] == "mean over seeds")]

    def user_means(variant):
        runs = [load_run(RUNS / "toy" / "sasrec" / variant / f"seed{s}" / "metrics.json").ranks() for s in (1, 2)]
        return pd.concat([pd.Series(per_user_metric(r.to_numpy(), "ndcg@10"), index=r.index) for r in runs], axis=1).mean(axis=1)

    t, c = user_means("p2rec"), user_means("none")
    expected = stats.ttest_rel(t.loc[c.index], c).pvalue
    assert row["p_value"].iloc[0] == pytest.approx(expected, rel=1e-4)
    assert json.loads((out / "toy_timings.json").read_text())["sft_samples"] is not None
    # no finished run of the asked dataset: one line, exit 2
    missing = subprocess.run([sys.executable, "-m", "p2rec", "bench", "summary", "--dataset", "absent", "--results",
                              str(results), "--out", str(out)], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("p2rec bench: error: no finished runs under")


# ----------------------------------------------------------------------------------------------- dataset seeds
def test_dataset_seeds_narrow_the_expected_grid_of_one_dataset():
    from p2rec.report.tables import build_grid, load_runs

    runs = load_runs(sorted(RUNS.glob("*/*/*/seed*/metrics.json")))
    order = {"datasets": ["toy", "mini"], "backbones": ["sasrec"], "variants": ["none", "p2rec"], "seeds": [1, 2]}
    plain = build_grid(runs, order, expect=True)
    assert [r.reason for r in plain.cell("mini", "sasrec", "none").failed] == ["no result (metrics.json not found)"]
    narrowed = build_grid(runs, {**order, "dataset_seeds": {"mini": [1]}}, expect=True)
    assert narrowed.cell("mini", "sasrec", "none").status == "ok"
    assert narrowed.seeds_by_dataset() == {"toy": [1, 2], "mini": [1]}
    # a seed outside the dataset's own list is left out even where its run exists
    only_two = build_grid(runs, {**order, "dataset_seeds": {"toy": [2]}}, expect=True)
    assert [r.seed for r in only_two.cell("toy", "sasrec", "none").runs] == [2]


def test_seeds_caption_per_dataset_only_where_they_differ():
    from p2rec.report.tables import seeds_text

    assert seeds_text([1, 2, 3]) == "3 seeds (1, 2, 3)"
    assert seeds_text({"beauty": [1, 2, 3], "yelp": [1, 2, 3]}) == "3 seeds (1, 2, 3)"
    assert seeds_text({"beauty": [1, 2, 3], "yelp": [1]}) == "seeds 1, 2, 3 (beauty); 1 (yelp)"


def test_dataset_seeds_in_config_files_and_filters(tmp_path):
    from p2rec import P2RecError
    from p2rec.workflow.config import dataset_seeds, validate_config
    from p2rec.report.commands import in_grid
    from p2rec.workflow.targets import run_files

    raw = {**yaml.safe_load((REPO / "config.yaml").read_text()), "datasets": ["synthetic"], "backbones": ["sasrec"],
           "variants": ["none"], "seeds": [1, 2, 3], "dataset_seeds": {"synthetic": ["1"]}}
    config = validate_config(raw)
    assert dataset_seeds(config, "synthetic") == [1]
    assert dataset_seeds(config, "beauty") == [1, 2, 3]
    assert run_files(config, "metrics.json") == ["runs/synthetic/sasrec/none/seed1/metrics.json"]
    assert report_context(config)["grid"]["dataset_seeds"] == {"synthetic": [1]}
    with pytest.raises(P2RecError, match=r"dataset_seeds\.nowhere"):
        validate_config({**raw, "dataset_seeds": {"nowhere": [1]}})
    with pytest.raises(P2RecError, match=r"dataset_seeds\.synthetic"):
        validate_config({**raw, "dataset_seeds": {"synthetic": []}})
    paths = [f"c/{d}/sasrec/none/seed{s}/metrics.json" for d in ("a", "b") for s in (1, 2)]
    grid = {"datasets": ["a", "b"], "backbones": ["sasrec"], "variants": ["none"], "seeds": [1, 2],
            "dataset_seeds": {"b": [2]}}
    runs, _, _ = in_grid(paths, [], grid)
    assert runs == ["c/a/sasrec/none/seed1/metrics.json", "c/a/sasrec/none/seed2/metrics.json",
                    "c/b/sasrec/none/seed2/metrics.json"]


# ----------------------------------------------------------------------------------------------- seed-level verdicts
def _simulated_grid(root: Path, seeds=(1, 2, 3, 4), effects=None, one_seed=()) -> list[Path]:
    """none / cf_init / p2rec runs on one simulated dataset (same seed = same run shift); ``one_seed``:
    variants run with the first seed only."""
    from tests.synthetic_runs import simulate_ranks, write_method

    effects = effects or {"none": 0.0, "cf_init": 0.02, "p2rec": 0.3}
    base, shifts = simulate_ranks(400, seeds, run_sd=0.1, user_sd=0.3, rng_seed=1)
    paths = write_method(root, "none", base)
    for i, (variant, effect) in enumerate(effects.items()):
        if variant == "none":
            continue
        ranks, _ = simulate_ranks(400, seeds[:1] if variant in one_seed else seeds, run_sd=0.1, user_sd=0.3,
                                  rng_seed=10 + i, shifts=shifts, effect=effect)
        paths += write_method(root, variant, ranks)
    return paths


def test_families_are_every_variant_vs_none_and_every_llm_variant_vs_cf_init():
    from p2rec.report.runs import Grid
    from p2rec.report.significance import comparisons

    settings = report_settings({})
    grid = Grid(["d"], ["b"], ["none", "cf_init", "instance", "p2rec", "textemb"], {})
    assert comparisons(grid, settings) == [
        ("cf_init", "none"), ("instance", "none"), ("p2rec", "none"), ("textemb", "none"),
        ("instance", "cf_init"), ("p2rec", "cf_init"), ("textemb", "cf_init")]
    without = Grid(["d"], ["b"], ["none", "p2rec"], {})
    assert comparisons(without, settings) == [("p2rec", "none")]
    assert comparisons(grid, report_settings({"control": None}))[-1] == ("textemb", "none")


def test_seed_level_marks_holm_within_families_and_the_verdict_table(tmp_path):
    out = tmp_path / "tables"
    build_tables(_simulated_grid(tmp_path / "runs"), out, {"report": {"bootstrap_samples": 100}}, staleness=current)
    sig = pd.read_csv(out / "verdict.csv")
    assert len(sig) == 2 * 3  # per metric: cf_init vs none, p2rec vs none, p2rec vs cf_init
    assert (sig["test"] == "seeds_ttest").all() and (sig["df"] == 3).all() and (sig["family_size"] == 3).all()
    for _, family in sig.groupby("metric"):
        np.testing.assert_allclose(family["p_holm"], holm(family["p_raw"]))
    ndcg = sig[(sig.metric == "ndcg@10") & (sig.treatment == "p2rec") & (sig.comparator == "none")].iloc[0]
    assert ndcg["significant"] and ndcg["ci_low"] > 0 and 0 < ndcg["mde"] < ndcg["effect"]
    cells = _cells((out / "main.md").read_text())[("sim", "sasrec")]
    assert cells["NDCG@10 p2rec"].endswith(r"\*") and not cells["NDCG@10 cf_init"].endswith(r"\*")
    verdict = (out / "verdict.md").read_text()
    assert "## sim / sasrec" in verdict and "| NDCG@10 | p2rec | 4 |" in verdict
    assert "vs cf_init: effect [95% CI]" in verdict and "MDE" in verdict


def test_extra_pairs_get_their_own_columns_in_the_verdict_table_and_count_in_holm(tmp_path):
    """report.pairs (an ablation against P2Rec as published): a column group of its own in verdict.md, its
    rows in verdict.csv, and one more test in each Holm family."""
    out = tmp_path / "tables"
    build_tables(_simulated_grid(tmp_path / "runs"), out, {"report": {"bootstrap_samples": 100,
                 "pairs": [{"treatment": "cf_init", "comparator": "p2rec"}]}}, staleness=current)
    sig = pd.read_csv(out / "verdict.csv")
    assert (sig["family_size"] == 4).all()
    row = sig[(sig.metric == "ndcg@10") & (sig.treatment == "cf_init") & (sig.comparator == "p2rec")].iloc[0]
    assert row["effect"] < 0 and row["df"] == 3
    verdict = (out / "verdict.md").read_text()
    assert "| vs p2rec: effect [95% CI] |" in verdict
    cf_row = next(line for line in verdict.splitlines() if line.startswith("| NDCG@10 | cf_init |"))
    from p2rec.report.formatting import fmt_pct

    assert fmt_pct(row["effect"]) in cf_row


def test_a_one_seed_comparison_gets_its_effect_over_users_only_and_no_mark(tmp_path):
    out = tmp_path / "tables"
    paths = _simulated_grid(tmp_path / "runs", seeds=(1,), effects={"none": 0.0, "p2rec": 0.6})
    build_tables(paths, out, {"report": {"bootstrap_samples": 200}}, staleness=current)
    sig = pd.read_csv(out / "significance.csv")
    assert (sig["test"] == "users only").all() and sig["p_raw"].isna().all() and not sig["significant"].any()
    assert (sig["ci_low"] > 0).all()  # a large effect, clearly non-zero over users, still no mark
    assert r"\*" not in (out / "main.md").read_text()
    assert "users only | n/a | n/a | n/a |" in (out / "verdict.md").read_text()


def test_unpairable_runs_are_refused_naming_them(tmp_path):
    from p2rec import P2RecError

    root = tmp_path / "runs"
    paths = _simulated_grid(root, seeds=(1, 2, 3))
    moved = root / "sim/sasrec/p2rec/seed3"
    moved.rename(root / "sim/sasrec/p2rec/seed4")  # the same method, another seed set
    paths = sorted(root.glob("*/*/*/seed*/metrics.json"))
    with pytest.raises(P2RecError, match=r"seeds \[1, 2, 3\] vs \[1, 2, 4\].*p2rec/seed4.*none/seed3|"
                                         r"seeds \[1, 2, 4\] vs \[1, 2, 3\].*p2rec/seed4"):
        build_tables(paths, tmp_path / "t", staleness=current)
    (root / "sim/sasrec/p2rec/seed4").rename(moved)
    # other test users in one run
    ranks = pd.read_csv(moved / "ranks.csv.gz")
    from p2rec.report.runs import write_gzip_text

    write_gzip_text(moved / "ranks.csv.gz", ranks.assign(user=ranks["user"] + 1).to_csv(index=False))
    with pytest.raises(P2RecError, match=r"different test users.*"):
        build_tables(sorted(root.glob("*/*/*/seed*/metrics.json")), tmp_path / "t", staleness=current)
    write_gzip_text(moved / "ranks.csv.gz", ranks.to_csv(index=False))
    # another dataset version recorded in config.json
    (moved / "config.json").write_text(json.dumps({"seed": 3, "data_sha256": "other"}))
    (root / "sim/sasrec/none/seed3/config.json").write_text(json.dumps({"seed": 3, "data_sha256": "abc"}))
    with pytest.raises(P2RecError, match=r"p2rec vs none: .*p2rec/seed3 and .*none/seed3: different dataset versions "
                                         r"\(data_sha256: 'other' vs 'abc'\)"):
        build_tables(sorted(root.glob("*/*/*/seed*/metrics.json")), tmp_path / "t", staleness=current)
    (moved / "config.json").write_text(json.dumps({"seed": 3}))
    # another dataset version recorded by the workflow in provenance.json
    (moved / "provenance.json").write_text(json.dumps({"data_version": "0123"}))
    (root / "sim/sasrec/none/seed3/provenance.json").write_text(json.dumps({"data_version": "4567"}))
    with pytest.raises(P2RecError, match=r"different dataset versions \(provenance.data_version: '0123' vs '4567'\)"):
        build_tables(sorted(root.glob("*/*/*/seed*/metrics.json")), tmp_path / "t", staleness=current)
    (moved / "provenance.json").unlink()
    (root / "sim/sasrec/none/seed3/provenance.json").unlink()
    # a finished run without its per-user ranks
    (moved / "ranks.csv.gz").unlink()
    with pytest.raises(P2RecError, match=r"p2rec/seed3/ranks\.csv\.gz: per-user ranks missing for the finished run "
                                         r"sim/sasrec/p2rec/seed3"):
        build_tables(sorted(root.glob("*/*/*/seed*/metrics.json")), tmp_path / "t", staleness=current)


def test_variant_seeds_pair_a_costly_variant_on_the_seeds_it_ran(tmp_path):
    """A variant declared on fewer seeds (variant_seeds) is compared over the seeds both sides ran: one shared
    seed gives its effect over users only and no mark, while the other comparisons keep the seed-level test.
    Undeclared, the same runs are refused as a mixed grid."""
    from p2rec import P2RecError

    paths = _simulated_grid(tmp_path / "runs", seeds=(1, 2, 3), one_seed=("p2rec",),
                            effects={"none": 0.0, "cf_init": 0.02, "p2rec": 0.6})
    grid = {"datasets": ["sim"], "backbones": ["sasrec"], "variants": ["none", "cf_init", "p2rec"], "seeds": [1, 2, 3]}
    with pytest.raises(P2RecError, match=r"seeds \[1\] vs \[1, 2, 3\].*variant_seeds"):
        build_tables(paths, tmp_path / "refused", {"grid": grid}, staleness=current)
    # as the configured grid without the declaration, the two missing runs are failures
    build_tables(paths, tmp_path / "missing", {"grid": grid}, grid_filter=True, staleness=current)
    assert "p2rec: 2 of 3 seeds failed" in (tmp_path / "missing" / "main.md").read_text()
    out = tmp_path / "tables"
    build_tables(paths, out, {"grid": {**grid, "variant_seeds": {"p2rec": [1]}}, "report": {"bootstrap_samples": 200}},
                 grid_filter=True, staleness=current)
    # as the workflow's gather gives them (exactly the grid's runs, no filter): the same verdict
    build_tables(paths, tmp_path / "gathered", {"grid": {**grid, "variant_seeds": {"p2rec": [1]}},
                                                "report": {"bootstrap_samples": 200}}, staleness=current)
    assert (tmp_path / "gathered" / "verdict.csv").read_text() == (out / "verdict.csv").read_text()
    sig = pd.read_csv(out / "verdict.csv").set_index(["metric", "treatment", "comparator"])
    one = sig.loc[("ndcg@10", "p2rec", "none")]
    assert one["test"] == "users only" and one["n_seeds"] == 1 and one["n_seeds_comparator"] == 3
    assert str(one["seeds"]) == "1" and np.isnan(one["p_raw"]) and not one["significant"] and one["ci_low"] > 0
    assert sig.loc[("ndcg@10", "cf_init", "none"), "df"] == 2
    # the Holm family counts the tested comparisons only
    assert (sig.loc["ndcg@10", "family_size"] == 1).all()
    main = (out / "main.md").read_text()
    assert "means over 3 seeds (1, 2, 3); p2rec on seed 1 only." in main and r"\*" not in main
    long = pd.read_csv(out / "main.csv")
    assert long.loc[long.variant == "p2rec", "n_seeds"].eq(1).all()
    assert long.loc[long.variant == "none", "n_seeds"].eq(3).all()
    # in configuration files: a subset of the grid's seeds, of a known variant
    from p2rec.workflow.config import validate_config
    from p2rec.workflow.seeds import check_variant_seeds, run_seeds
    from p2rec.workflow.targets import run_files

    raw = {**yaml.safe_load((REPO / "config.yaml").read_text()), "datasets": ["synthetic"], "backbones": ["sasrec"],
           "variants": ["none", "p2rec"], "seeds": [1, 2]}
    config = validate_config({**raw, "variant_seeds": {"p2rec": [2]}})
    check_variant_seeds(config)
    assert run_seeds(config, "synthetic", "p2rec") == [2] and run_seeds(config, "synthetic", "none") == [1, 2]
    assert run_files(config, "metrics.json") == ["runs/synthetic/sasrec/none/seed1/metrics.json",
                                                 "runs/synthetic/sasrec/none/seed2/metrics.json",
                                                 "runs/synthetic/sasrec/p2rec/seed2/metrics.json"]
    assert report_context(config)["grid"]["variant_seeds"] == {"p2rec": [2]}
    with pytest.raises(P2RecError, match=r"variant_seeds\.nowhere': unknown variant"):
        check_variant_seeds(validate_config({**raw, "variant_seeds": {"nowhere": [1]}}))
    with pytest.raises(P2RecError, match=r"variant_seeds\.p2rec': seed\(s\) \[5\] not among the grid's seeds"):
        check_variant_seeds(validate_config({**raw, "variant_seeds": {"p2rec": [5]}}))
    with pytest.raises(P2RecError, match=r"variant_seeds\.p2rec"):  # the schema: a list of integers
        validate_config({**raw, "variant_seeds": {"p2rec": []}})


def test_runs_from_other_code_are_marked_with_a_dagger(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    paths = _simulated_grid(root, seeds=(1, 2))
    flagged = {"p2rec"}
    out = tmp_path / "hook"
    build_tables(paths, out, staleness=lambda run: "stale stages: train:sasrec" if run.variant in flagged else "")
    md = (out / "main.md").read_text()
    cells = _cells(md)[("sim", "sasrec")]
    assert cells["NDCG@10 p2rec"].endswith("†") and not cells["NDCG@10 none"].endswith("†")
    assert "† : from runs made with code other than the current checkout (see `python -m p2rec status`)." in md
    assert r"$^{\dagger}$" in (out / "main.tex").read_text()
    long = pd.read_csv(out / "main.csv", keep_default_na=False)
    assert set(long.loc[long.variant == "none", "stale"]) == {""}
    assert set(long.loc[long.variant == "p2rec", "stale"]) == {"seed 1: stale stages: train:sasrec; "
                                                                "seed 2: stale stages: train:sasrec"}
    assert "| NDCG@10 | p2rec† |" in (out / "verdict.md").read_text()
    # the default hook: no provenance.json = not known to be current
    from p2rec.report.runs import load_run, stale_reason

    run = load_run(paths[0])
    assert stale_reason(run) == "no provenance.json"
    versions = pytest.importorskip("p2rec.workflow.versions")
    (run.path / "provenance.json").write_text(json.dumps({"code_versions": {"train:sasrec": "train:sasrec-0"}}))
    monkeypatch.setattr(versions, "stale_stages", lambda recorded: [])
    assert stale_reason(run) == ""
    monkeypatch.setattr(versions, "stale_stages", lambda recorded: sorted(recorded))
    assert stale_reason(run) == "stale stages: train:sasrec"
