"""Workflow paths: the per-run files, timing files and report targets of a configured grid."""
from __future__ import annotations

#: the tables the workflow's paper_tables rule declares (report_targets lists them)
TABLE_FILES = ("main.md", "main.csv", "main.tex", "significance.csv", "robustness.md", "robustness.csv",
               "robustness.tex", "efficiency.md", "efficiency.csv")
#: written by build_tables too; not yet in report_targets until the rule declares them as outputs
VERDICT_FILES = ("verdict.md", "verdict.csv", "verdict.tex")
PLOT_KINDS = ("scores", "convergence")


def run_files(config: dict, name: str, datasets: list[str] | None = None) -> list[str]:
    """``name`` (metrics.json, ranks.csv.gz, ...) of every configured run, optionally of some datasets only."""
    from p2rec.workflow.config import dataset_seeds

    return [f"results/runs/{d}/{b}/{v}/seed{s}/{name}" for d in (datasets or config["datasets"])
            for b in config["backbones"] for v in config["variants"] for s in dataset_seeds(config, d)]


def llm_timing_files(config: dict, extraction: bool = False) -> list[str]:
    """SFT (or embedding-extraction) timing files of the configured variants named in report.sft_variants."""
    settings = config["report"]
    template = settings["extract_timing"] if extraction else settings["sft_timing"]
    if not template:
        return []
    return [template.format(dataset=d, variant=v) for d in config["datasets"] for v in config["variants"]
            if v in settings["sft_variants"]]


def stage0_timing_files(config: dict) -> list[str]:
    """Stage-0 timing files of the configured datasets, when a configured variant starts from stage 0's item
    table (an item_init under results/pretrain/ or results/llm/)."""
    template = config["report"].get("stage0_timing")
    inits = [str((config["variant_catalog"].get(v) or {}).get("item_init") or "") for v in config["variants"]]
    if not template or not any(i.startswith(("results/pretrain/", "results/llm/")) for i in inits):
        return []
    return [template.format(dataset=d) for d in config["datasets"]]


def report_targets(config: dict) -> list[str]:
    """Every table and figure of the configured grid (the SFT plot only when SFT timing files are expected)."""
    targets = [f"results/tables/{name}" for name in TABLE_FILES]
    targets += [f"results/plots/{d}/{kind}.{fmt}" for d in config["datasets"] for kind in PLOT_KINDS
                for fmt in ("png", "pdf")]
    if llm_timing_files(config):
        targets += ["results/plots/sft_efficiency.png", "results/plots/sft_efficiency.pdf"]
    return targets
