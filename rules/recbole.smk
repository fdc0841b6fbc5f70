# RecBole 1.2.1 training a backbone, for the variants whose catalog entry says `runner: recbole` (experiment
# recbole; docs/backbones.md): the run folder has the six files of train_backbone, so the tables and the publish
# rule take it like any run. RecBole runs in its own environment; `p2rec bench recbole-run` converts the split,
# starts RecBole's worker and writes the run's files (p2rec.bench.recbole_runs).
from p2rec.bench.recbole_runs import check_config as check_recbole_config

# a grid RecBole cannot train (e.g. a backbone it has no model of) fails here, naming the key
check_recbole_config(config)


rule recbole_run:
    input:
        data=W("data/{dataset}/sequences.txt"),
    output:
        metrics=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/metrics.json"),
        ranks=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/ranks.csv.gz"),
        timing=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/timing.json"),
        config=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/config.json"),
        history=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/history.csv"),
        provenance=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/provenance.json"),
    wildcard_constraints:
        variant=variants_run_by("recbole"),  # p2rec's variants: train_backbone
    params:
        settings=recbole_settings_json,
        # the RecBole adapter's and worker's code version (also in the lineage, which the rule passes)
        code_version=stage_version("recbole"),
        provenance=run_provenance,
        restore=restore_flag,
        record_failure=config["report"]["record_failures"],
        out_dir=lambda w, output: str(Path(output.metrics).parent),
    resources:
        gpu=gpu_resource(),  # one slot, as a p2rec run
    log:
        W("logs/recbole/{dataset}/{backbone}/{variant}/seed{seed}.log"),
    conda:
        "../envs/recbole.yaml"
    shell:
        gpu_job(
            "python -m p2rec bench recbole-run --data {input.data} --settings {params.settings:q}"
            " --seed {wildcards.seed} --out-dir {params.out_dir} --provenance {params.provenance:q} {params.restore}"
            " --record-failure {params.record_failure} > {log} 2>&1"
        )
