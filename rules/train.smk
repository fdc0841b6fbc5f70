rule train_backbone:
    input:
        data=W("data/{dataset}/sequences.txt"),
        item_init=item_init_input,
    output:
        metrics=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/metrics.json"),
        ranks=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/ranks.csv.gz"),
        timing=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/timing.json"),
        config=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/config.json"),
        history=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/history.csv"),
        provenance=W("runs/{dataset}/{backbone}/{variant}/seed{seed}/provenance.json"),
    wildcard_constraints:
        variant=variants_run_by("p2rec"),  # RecBole's variants: rules/recbole.smk
    params:
        settings=settings_json,
        init=item_init_flag,
        # code versions (derived from the source files) and upstream settings: the rerun trigger
        provenance=run_provenance,
        restore=restore_flag,
        record_failure=config["report"]["record_failures"],
        out_dir=lambda w, output: str(Path(output.metrics).parent),
    resources:
        gpu=gpu_resource(),  # one slot: small jobs share a device
    log:
        W("logs/train/{dataset}/{backbone}/{variant}/seed{seed}.log"),
    conda:
        CPU_ENV
    shell:
        gpu_job(
            "python -m p2rec train --data {input.data} --settings {params.settings:q} --seed {wildcards.seed}"
            " --out-dir {params.out_dir} {params.init} --provenance {params.provenance:q} {params.restore}"
            " --no-progress --record-failure {params.record_failure} > {log} 2>&1"
        )
