# The text_init baseline (docs/adding-a-baseline.md): a sentence encoder embeds each item's text (no
# fine-tuning), then the reduction every LLM variant uses (PCA + rescaling, `p2rec reduce`) makes the
# backbone's item table. Params: the encoder settings and code versions only (text_init.* runtime keys go
# into the command text), so backbone settings never rerun it.
from p2rec.baselines.text_init import text_init_settings
from p2rec.llm.settings import reduce_settings

# options that never change a result go into the command text, not params, so they trigger nothing (the
# global `snakemake --lint` names, on purpose, as in rules/llm.smk)
TEXT_INIT = config["text_init"]
TEXT_INIT_OPTS = f"--batch-size {TEXT_INIT['batch_size']} --device {TEXT_INIT['device']}"
TEXT_INIT_THREADS = TEXT_INIT["threads"] or (workflow.cores if isinstance(workflow.cores, int) else 1)


rule text_init_embed:
    input:
        text=W("data/{dataset}/items.tsv"),
        stats=W("data/{dataset}/stats.json"),
    output:
        embeddings=W("text_init/{dataset}/item_text.npy"),
        timing=W("text_init/{dataset}/timing.json"),
    params:
        settings=json.dumps(text_init_settings(config), sort_keys=True),
        code_version=stage_version("text_init"),
    threads: TEXT_INIT_THREADS
    log:
        W("logs/text_init/{dataset}/embed.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec text-embed --items {input.text} --stats {input.stats} --settings {params.settings:q}"
        " --out {output.embeddings} --timing {output.timing} {TEXT_INIT_OPTS} --threads {threads} > {log} 2>&1"


rule text_init_table:
    input:
        embeddings=W("text_init/{dataset}/item_text.npy"),
        stats=W("data/{dataset}/stats.json"),
    output:
        table=W("text_init/{dataset}/item_init_d{hidden}.npy"),
        info=W("text_init/{dataset}/item_init_d{hidden}.json"),
    params:
        settings=lambda w: json.dumps(reduce_settings(w.hidden), sort_keys=True),
        code_version=stage_version("reduce"),
    log:
        W("logs/text_init/{dataset}/reduce_d{hidden}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec reduce --input {input.embeddings} --stats {input.stats} --settings {params.settings:q}"
        " --out {output.table} --info {output.info} > {log} 2>&1"
