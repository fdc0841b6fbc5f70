# The LLM stages (METHOD.md section 4; docs/llm.md): categories -> SFT (user-level `p2rec`, instance-level
# `instance`, and any catalog entry declaring `sft`: an ablation variant with its own llm overrides) ->
# extraction -> reduction to each backbone hidden size. Params hold only the llm settings each rule reads
# plus a code version (p2rec.llm.settings), so backbone settings never rerun these rules. {sft} is the
# variant's name (its folder); {categories} the categories folder (`categories`, or e.g. `categories_k8` for
# a variant whose k differs).
from p2rec.llm.settings import (
    CATEGORIES_FOLDER_PATTERN,
    categories_folder,
    categories_folder_settings,
    check_variant_catalog,
    extract_settings,
    llm_variant_names,
    model_input,
    model_name,
    needs_items,
    reduce_settings,
    requested_gpus,
    runtime_settings,
    sft_launcher,
    variant_sft_mode,
    variant_sft_settings,
)

check_variant_catalog(config)  # a bad variant_catalog.<name>.llm override fails here, naming the key

# options that never change a result: written into the command text, not params, so they trigger nothing
# (the two globals `snakemake --lint` names, on purpose)
LLM_RUNTIME = runtime_settings(config)
LLM_SFT_OPTS = f"--checkpoint-every {LLM_RUNTIME['checkpoint_every']}"
LLM_EXTRACT_OPTS = f"--batch-size {LLM_RUNTIME['extract_batch_size']}"
# torch threads of an LLM job, declared to the scheduler so that concurrent jobs never oversubscribe the
# cores (measured on a busy 2-core CPU: 25 tokens/s with 2 threads, 150 with 1); 0 = all of --cores
LLM_THREADS = LLM_RUNTIME["threads"] or (workflow.cores if isinstance(workflow.cores, int) else 1)
# `--set-resources llm_sft:gpu=N` (N > 1) runs the SFT data-parallel under torchrun, one process per device;
# with one device the command text is the same as ever (p2rec.llm.settings.sft_launcher)
SFT_GPUS = requested_gpus(workflow.resource_settings.overwrite_resources, "llm_sft")


wildcard_constraints:
    sft=_alternatives(llm_variant_names(config)),
    categories=CATEGORIES_FOLDER_PATTERN,
    hidden=r"\d+",


def variant_categories(w, name):
    """A file of the categories folder the LLM variant {sft} reads."""
    folder = categories_folder(pipeline_config(config, w.pipeline), w.dataset, w.sft)
    return W(f"llm/{w.pipeline}/{w.dataset}/{folder}/{name}")


def items_input(w):
    """The dataset's items file, for a variant whose prompts show item texts (rules/items.smk)."""
    return [W(f"data/{w.dataset}/items.tsv")] if needs_items(config, w.dataset, w.sft) else []


rule convert_llm:
    output:
        directory(config["llm"]["converted_dir"]),
    params:
        code_version=stage_version("convert"),
    log:
        W("logs/llm/convert.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec convert-llm --out {output} > {log} 2>&1"


rule llm_categories:
    input:
        data=W("data/{dataset}/sequences.txt"),
        table=W("pretrain/{pipeline}/{dataset}/item_table.npy"),
    output:
        categories=W("llm/{pipeline}/{dataset}/{categories}/categories.npy"),
        g_u=W("llm/{pipeline}/{dataset}/{categories}/g_u.npy"),
        users=W("llm/{pipeline}/{dataset}/{categories}/users.txt"),
        summary=W("llm/{pipeline}/{dataset}/{categories}/categories.json"),
    params:
        settings=lambda w: json.dumps(
            categories_folder_settings(pipeline_config(config, w.pipeline), w.dataset, w.categories), sort_keys=True
        ),
        code_version=stage_version("categories"),
        out_dir=lambda w, output: str(Path(output.summary).parent),
    log:
        W("logs/llm/{pipeline}/{dataset}/{categories}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec categories --data {input.data} --item-table {input.table} --settings {params.settings:q}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule llm_sft:
    input:
        data=W("data/{dataset}/sequences.txt"),
        table=W("pretrain/{pipeline}/{dataset}/item_table.npy"),
        categories=lambda w: variant_categories(w, "categories.npy"),
        g_u=lambda w: [variant_categories(w, "g_u.npy")] if variant_sft_mode(config, w.sft) == "user" else [],
        texts=items_input,
        model=lambda w: model_input(config, w.dataset, w.sft),
    output:
        adapter=directory(W("llm/{pipeline}/{dataset}/{sft}/adapter")),
        timing=W("llm/{pipeline}/{dataset}/{sft}/timing.json"),
    cache: True
    params:
        settings=lambda w: json.dumps(
            variant_sft_settings(pipeline_config(config, w.pipeline), w.dataset, w.sft), sort_keys=True
        ),
        mode=lambda w: variant_sft_mode(config, w.sft),
        g_u=lambda w, input: f"--g-u {input.g_u}" if input.g_u else "",
        # the option only, never the path (a param holding the working folder would split the cache key
        # between experiments); "" in soft mode: the command as before
        texts=lambda w, input: " --items " if input.texts else "",
        model=lambda w, input: input.model[0] if input.model else model_name(config, w.dataset, w.sft),
        code_version=stage_version("sft"),
    threads: LLM_THREADS
    resources:
        gpu=gpu_resource(whole_device=True),  # the LLM takes a whole device
    log:
        W("logs/llm/{pipeline}/{dataset}/sft_{sft}.log"),
    conda:
        CPU_ENV
    shell:
        gpu_job(
            sft_launcher(SFT_GPUS) + " sft --mode {params.mode} --data {input.data} --item-table {input.table}"
            " --categories {input.categories} {params.g_u}{params.texts}{input.texts} --model {params.model:q}"
            " --settings {params.settings:q}"
            " --out-dir $(dirname {output.timing}) {LLM_SFT_OPTS} --threads {threads}"
            " > {log} 2>&1"
        )


rule llm_extract:
    input:
        adapter=W("llm/{pipeline}/{dataset}/{sft}/adapter"),
        table=W("pretrain/{pipeline}/{dataset}/item_table.npy"),
        texts=items_input,
        model=lambda w: model_input(config, w.dataset, w.sft),
    output:
        hidden=W("llm/{pipeline}/{dataset}/{sft}/item_hidden.npy"),
        parsed=W("llm/{pipeline}/{dataset}/{sft}/parsed_categories.npy"),
        timing=W("llm/{pipeline}/{dataset}/{sft}/extract_timing.json"),
    cache: True
    params:
        settings=lambda w: json.dumps(extract_settings(config, w.dataset, w.sft), sort_keys=True),
        # the option only, never the path (a param holding the working folder would split the cache key
        # between experiments); "" in soft mode: the command as before
        texts=lambda w, input: " --items " if input.texts else "",
        model=lambda w, input: input.model[0] if input.model else model_name(config, w.dataset, w.sft),
        code_version=stage_version("extract"),
    threads: LLM_THREADS
    resources:
        gpu=gpu_resource(whole_device=True),  # the LLM takes a whole device
    log:
        W("logs/llm/{pipeline}/{dataset}/extract_{sft}.log"),
    conda:
        CPU_ENV
    shell:
        gpu_job(
            "python -m p2rec extract --adapter {input.adapter} --item-table {input.table}{params.texts}{input.texts}"
            " --model {params.model:q}"
            " --settings {params.settings:q} --out-hidden {output.hidden} --out-parsed {output.parsed}"
            " --out-timing {output.timing} {LLM_EXTRACT_OPTS} --threads {threads} > {log} 2>&1"
        )


rule llm_reduce:
    input:
        hidden=W("llm/{pipeline}/{dataset}/{sft}/item_hidden.npy"),
        stats=W("data/{dataset}/stats.json"),
    output:
        table=W("llm/{pipeline}/{dataset}/{sft}/item_init_d{hidden}.npy"),
        info=W("llm/{pipeline}/{dataset}/{sft}/item_init_d{hidden}.json"),
    params:
        settings=lambda w: json.dumps(reduce_settings(w.hidden), sort_keys=True),
        code_version=stage_version("reduce"),
    log:
        W("logs/llm/{pipeline}/{dataset}/reduce_{sft}_d{hidden}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec reduce --input {input.hidden} --stats {input.stats} --settings {params.settings:q}"
        " --out {output.table} --info {output.info} > {log} 2>&1"


rule llm_parse_eval:
    input:
        categories=lambda w: variant_categories(w, "categories.npy"),
        parsed=W("llm/{pipeline}/{dataset}/{sft}/parsed_categories.npy"),
        truth=W("data/{dataset}/truth.tsv"),
    output:
        W("llm/{pipeline}/{dataset}/{sft}/parse_eval.json"),
    params:
        code_version=stage_version("parse"),
    log:
        W("logs/llm/{pipeline}/{dataset}/parse_eval_{sft}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec parse-eval --categories {input.categories} --parsed {input.parsed} --truth {input.truth}"
        " --label {wildcards.dataset}/{wildcards.sft} --out {output} > {log} 2>&1"


rule llm_parse_table:
    input:
        T.parse_eval_files(config),
    output:
        W("tables/categories.csv"),
    log:
        W("logs/tables/categories.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec parse-table --inputs {input} --out {output} > {log} 2>&1"
