rule train_backbone:
    input:
        data="results/data/{dataset}/sequences.txt",
        item_init=item_init_input,
    output:
        metrics="results/runs/{dataset}/{backbone}/{variant}/seed{seed}/metrics.json",
        ranks="results/runs/{dataset}/{backbone}/{variant}/seed{seed}/ranks.csv.gz",
        timing="results/runs/{dataset}/{backbone}/{variant}/seed{seed}/timing.json",
        config="results/runs/{dataset}/{backbone}/{variant}/seed{seed}/config.json",
        history="results/runs/{dataset}/{backbone}/{variant}/seed{seed}/history.csv",
    params:
        settings=settings_json,
        init=item_init_flag,
        code_version="train-1",
    resources:
        gpu=1,
    log:
        "results/logs/train/{dataset}/{backbone}/{variant}/seed{seed}.log",
    shell:
        gpu_job(
            "{P2REC} train --data {input.data} --settings {params.settings:q} --seed {wildcards.seed}"
            " --out-dir results/runs/{wildcards.dataset}/{wildcards.backbone}/{wildcards.variant}/seed{wildcards.seed}"
            " {params.init} --no-progress --record-failure {config[report][record_failures]} > {log} 2>&1"
        )
