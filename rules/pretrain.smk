# Stage 0 (METHOD.md section 4): the collaborative recommender trained once per dataset on the training
# split; its item table is shared by every LLM variant and backbone. Configured by `pretrain` only
# (p2rec.llm.settings.pretrain_settings), so sweeping a downstream backbone setting never retrains it.
from p2rec.llm.settings import pretrain_settings, reduce_settings


rule pretrain_backbone:
    input:
        data=W("data/{dataset}/sequences.txt"),
    output:
        table=W("pretrain/{pipeline}/{dataset}/item_table.npy"),
        metrics=W("pretrain/{pipeline}/{dataset}/run/metrics.json"),
        timing=W("pretrain/{pipeline}/{dataset}/run/timing.json"),
    cache: True
    params:
        settings=lambda w: json.dumps(pretrain_settings(pipeline_config(config, w.pipeline), w.dataset), sort_keys=True),
        seed=lambda w: pipeline_config(config, w.pipeline)["pretrain"]["seed"],
        code_version=stage_version("train", config["pretrain"]["backbone"]),
    resources:
        gpu=gpu_resource(),  # one slot: small jobs share a device
    log:
        W("logs/pretrain/{pipeline}/{dataset}.log"),
    conda:
        CPU_ENV
    shell:
        gpu_job(
            "python -m p2rec train --data {input.data} --settings {params.settings:q} --seed {params.seed}"
            " --out-dir $(dirname {output.metrics}) --save-item-table {output.table}"
            " --no-progress > {log} 2>&1"
        )


# cf_init: the stage-0 table reduced exactly like the LLM embeddings (PCA + rescaling), so cf_init and
# p2rec differ only in what is reduced.
rule cf_init_table:
    input:
        table=W("pretrain/{pipeline}/{dataset}/item_table.npy"),
        stats=W("data/{dataset}/stats.json"),
    output:
        table=W("pretrain/{pipeline}/{dataset}/item_init_d{hidden}.npy"),
        info=W("pretrain/{pipeline}/{dataset}/item_init_d{hidden}.json"),
    params:
        settings=lambda w: json.dumps(reduce_settings(w.hidden), sort_keys=True),
        code_version=stage_version("reduce"),
    log:
        W("logs/pretrain/{pipeline}/{dataset}/reduce_d{hidden}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec reduce --input {input.table} --stats {input.stats} --settings {params.settings:q}"
        " --out {output.table} --info {output.info} > {log} 2>&1"
