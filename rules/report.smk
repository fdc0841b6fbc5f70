# Paper tables, figures and the Snakemake report (docs/tables.md). The inputs are the declared per-run
# files of the configured grid: nothing here walks a directory, nothing appends to a shared file.
from p2rec.report.tables import (llm_timing_files, main_caption, report_context, report_targets, rst_escape, run_files,
                          stage0_timing_files)

REPORT_CONTEXT = report_context(config)
# the plots see only what they draw: a caption or alpha edit never redraws them
PLOT_CONTEXT = {
    "grid": REPORT_CONTEXT["grid"],
    "report": {k: config["report"][k] for k in ("plot_metric", "baseline", "treatment")},
}


rule paper_tables:
    input:
        metrics=run_files(config, "metrics.json"),
        ranks=run_files(config, "ranks.csv.gz"),
        timing=run_files(config, "timing.json"),
        config=run_files(config, "config.json"),
        sft_timing=llm_timing_files(config),
        extract_timing=llm_timing_files(config, extraction=True),
        stage0_timing=stage0_timing_files(config),
    output:
        main_md=report("results/tables/main.md", caption="../report/main.rst", category="Tables",
                       labels={"table": "main (markdown)"}),
        main_csv=report("results/tables/main.csv", caption="../report/main.rst", category="Tables",
                        labels={"table": "main (CSV, long form)"}),
        main_tex="results/tables/main.tex",
        significance=report("results/tables/significance.csv", caption="../report/significance.rst",
                            category="Tables", labels={"table": "significance"}),
        robustness_md=report("results/tables/robustness.md", caption="../report/robustness.rst",
                             category="Tables", labels={"table": "robustness (seed level)"}),
        robustness_csv="results/tables/robustness.csv",
        robustness_tex="results/tables/robustness.tex",
        efficiency_md=report("results/tables/efficiency.md", caption="../report/efficiency.rst",
                             category="Tables", labels={"table": "efficiency"}),
        efficiency_csv="results/tables/efficiency.csv",
    params:
        context=lambda w: json.dumps(REPORT_CONTEXT, sort_keys=True),  # a function: its braces are no wildcards
        caption=lambda w: rst_escape(main_caption(REPORT_CONTEXT)),
    log:
        "results/logs/tables/paper_tables.log",
    shell:
        "{P2REC} gather --metrics {input.metrics} --sft-timing {input.sft_timing} {input.extract_timing}"
        " --stage0-timing {input.stage0_timing} --context {params.context:q} --out-dir results/tables > {log} 2>&1"


rule dataset_plots:
    input:
        metrics=lambda w: run_files(config, "metrics.json", [w.dataset]),
        ranks=lambda w: run_files(config, "ranks.csv.gz", [w.dataset]),
        history=lambda w: run_files(config, "history.csv", [w.dataset]),
    output:
        scores_png=report("results/plots/{dataset}/scores.png", caption="../report/scores.rst",
                          category="{dataset}", labels={"figure": "test scores"}),
        scores_pdf="results/plots/{dataset}/scores.pdf",
        convergence_png=report("results/plots/{dataset}/convergence.png", caption="../report/convergence.rst",
                               category="{dataset}", labels={"figure": "convergence"}),
        convergence_pdf="results/plots/{dataset}/convergence.pdf",
    params:
        context=lambda w: json.dumps(PLOT_CONTEXT, sort_keys=True),
    log:
        "results/logs/plots/{dataset}.log",
    shell:
        "{P2REC} plots --metrics {input.metrics} --context {params.context:q} --out-dir results/plots > {log} 2>&1"


rule sft_efficiency_plot:
    input:
        sft_timing=llm_timing_files(config),
    output:
        png=report("results/plots/sft_efficiency.png", caption="../report/sft_efficiency.rst",
                   category="Efficiency", labels={"figure": "SFT cost"}),
        pdf="results/plots/sft_efficiency.pdf",
    log:
        "results/logs/plots/sft_efficiency.log",
    shell:
        "{P2REC} plots --sft-timing {input.sft_timing} --out-dir results/plots > {log} 2>&1"
