# Paper tables, figures and the Snakemake report (docs/tables.md). The inputs are the declared per-run
# files of the configured grid: nothing here walks a directory, nothing appends to a shared file.
# light modules only: the statistics are imported by the jobs, not while the workflow is parsed
from p2rec.report.captions import main_caption
from p2rec.report.formatting import rst_escape
from p2rec.report.settings import report_context


REPORT_CONTEXT = report_context(config)
# a param of every rule below: an edit of the report code rebuilds their outputs (no run depends on it)
REPORT_CODE_VERSION = stage_version("report")
# the plots see only what they draw: a caption or alpha edit never redraws them
PLOT_CONTEXT = {
    "grid": REPORT_CONTEXT["grid"],
    "report": {k: config["report"][k] for k in ("plot_metric", "baseline", "treatment")},
}


rule paper_tables:
    input:
        metrics=work_runs("metrics.json"),
        ranks=work_runs("ranks.csv.gz"),
        timing=work_runs("timing.json"),
        config=work_runs("config.json"),
        provenance=work_runs("provenance.json"),
        sft_timing=T.llm_timing_files(config),
        extract_timing=T.llm_timing_files(config, extraction=True),
        stage0_timing=T.stage0_timing_files(config),
    output:
        main_md=report(W("tables/main.md"), caption="../report/main.rst", category="Tables",
                       labels={"table": "main (markdown)"}),
        main_csv=report(W("tables/main.csv"), caption="../report/main.rst", category="Tables",
                        labels={"table": "main (CSV, long form)"}),
        main_tex=W("tables/main.tex"),
        significance=report(W("tables/significance.csv"), caption="../report/significance.rst",
                            category="Tables", labels={"table": "significance"}),
        robustness_md=report(W("tables/robustness.md"), caption="../report/robustness.rst",
                             category="Tables", labels={"table": "robustness (seed level)"}),
        robustness_csv=W("tables/robustness.csv"),
        robustness_tex=W("tables/robustness.tex"),
        efficiency_md=report(W("tables/efficiency.md"), caption="../report/efficiency.rst",
                             category="Tables", labels={"table": "efficiency"}),
        efficiency_csv=W("tables/efficiency.csv"),
        verdict_md=report(W("tables/verdict.md"), caption="../report/verdict.rst", category="Tables",
                          labels={"table": "verdict (seed level)"}),
        verdict_csv=W("tables/verdict.csv"),
        verdict_tex=W("tables/verdict.tex"),
    params:
        code_version=REPORT_CODE_VERSION,
        context=lambda w: json.dumps(REPORT_CONTEXT, sort_keys=True),  # a function: its braces are no wildcards
        caption=lambda w: rst_escape(main_caption(REPORT_CONTEXT)),
        out_dir=lambda w, output: str(Path(output.main_csv).parent),
    log:
        W("logs/tables/paper_tables.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec gather --metrics {input.metrics} --sft-timing {input.sft_timing} {input.extract_timing}"
        " --stage0-timing {input.stage0_timing} --context {params.context:q} --out-dir {params.out_dir} > {log} 2>&1"


rule dataset_plots:
    input:
        metrics=lambda w: work_runs("metrics.json", [w.dataset]),
        ranks=lambda w: work_runs("ranks.csv.gz", [w.dataset]),
        history=lambda w: work_runs("history.csv", [w.dataset]),
    output:
        scores_png=report(W("plots/{dataset}/scores.png"), caption="../report/scores.rst",
                          category="{dataset}", labels={"figure": "test scores"}),
        scores_pdf=W("plots/{dataset}/scores.pdf"),
        convergence_png=report(W("plots/{dataset}/convergence.png"), caption="../report/convergence.rst",
                               category="{dataset}", labels={"figure": "convergence"}),
        convergence_pdf=W("plots/{dataset}/convergence.pdf"),
    params:
        code_version=REPORT_CODE_VERSION,
        context=lambda w: json.dumps(PLOT_CONTEXT, sort_keys=True),
        out_dir=lambda w, output: str(Path(output.scores_png).parent.parent),
    log:
        W("logs/plots/{dataset}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec plots --metrics {input.metrics} --context {params.context:q} --out-dir {params.out_dir} > {log} 2>&1"


rule sft_efficiency_plot:
    input:
        sft_timing=T.llm_timing_files(config),
    output:
        png=report(W("plots/sft_efficiency.png"), caption="../report/sft_efficiency.rst",
                   category="Efficiency", labels={"figure": "SFT cost"}),
        pdf=W("plots/sft_efficiency.pdf"),
    params:
        code_version=REPORT_CODE_VERSION,
        out_dir=lambda w, output: str(Path(output.png).parent),
    log:
        W("logs/plots/sft_efficiency.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec plots --sft-timing {input.sft_timing} --out-dir {params.out_dir} > {log} 2>&1"


# A/A calibration of the tables' test (docs/statistics.md): `calibration.method` over the seeds, and the
# seed-level test's power against `calibration.planted`
rule calibration_table:
    input:
        runs=lambda w: [W(f"runs/{w.dataset}/{w.backbone}/{config['calibration']['method']}/seed{s}/metrics.json")
                        for s in T.run_seeds(config, w.dataset, config["calibration"]["method"])],
        planted=lambda w: [W(f"runs/{w.dataset}/{w.backbone}/{config['calibration']['planted']}/seed{s}/metrics.json")
                           for s in T.run_seeds(config, w.dataset, config["calibration"]["planted"])] if config["calibration"]["planted"] else [],
    output:
        csv=W("tables/calibration/{dataset}_{backbone}.csv"),
        md=W("tables/calibration/{dataset}_{backbone}.md"),
    params:
        code_version=REPORT_CODE_VERSION,
        alpha=lambda w: config["calibration"]["alpha"],
        max_splits=lambda w: config["calibration"]["max_splits"],
        seed=config["report"]["seed"],
        planted=lambda w, input: f"--planted {' '.join(input.planted)}" if input.planted else "",
        prefix=lambda w, output: output.csv[: -len(".csv")],
    log:
        W("logs/tables/calibration_{dataset}_{backbone}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec calibrate --runs {input.runs} {params.planted} --alpha {params.alpha}"
        " --max-splits {params.max_splits} --seed {params.seed} --out {params.prefix} > {log} 2>&1"
