# Item side information (docs/data.md, "Item text"): the prepared item text of a dataset and, where its
# source has them, one real category per item (Beauty/Yelp attribute categories, ML-1M genres), and the
# agreement of the k-means and parsed categories with those categories (rows of tables/categories.csv).
from p2rec.data.item_sources import items_entry


rule prepare_items:
    input:
        stats=W("data/{dataset}/stats.json"),
        truth=W("data/{dataset}/truth.tsv"),
        sequences=W("data/{dataset}/sequences.txt"),
    output:
        text=W("data/{dataset}/items.tsv"),
        categories=W("data/{dataset}/item_categories.csv"),
    params:
        # the item keys of the entry and its source only: editing the sequence file's keys never reruns this
        entry=lambda w: json.dumps(items_entry(config["catalog"][w.dataset]), sort_keys=True),
        data_dir=config["data_dir"],
        raw_dir=config["raw_dir"],
        code_version=stage_version("items"),
    log:
        W("logs/prepare/{dataset}_items.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec prepare-items --name {wildcards.dataset} --entry {params.entry:q} --data-dir {params.data_dir:q}"
        " --raw-dir {params.raw_dir:q}"
        " --prepared $(dirname {input.stats}) --out-items {output.text} --out-categories {output.categories}"
        " > {log} 2>&1"


# {sft} (an LLM variant's folder) is constrained globally in rules/llm.smk, and the k-means categories are the
# ones the variant's parse evaluation reads (variant_categories, rules/llm.smk)
rule attribute_eval:
    input:
        categories=lambda w: variant_categories(w, "categories.npy"),
        parsed=W("llm/{pipeline}/{dataset}/{sft}/parsed_categories.npy"),
        item_categories=W("data/{dataset}/item_categories.csv"),
    output:
        W("llm/{pipeline}/{dataset}/{sft}/attribute_eval.json"),
    params:
        code_version=stage_version("attribute_eval"),
    log:
        W("logs/llm/{pipeline}/{dataset}/attribute_eval_{sft}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec attribute-eval --categories {input.categories} --parsed {input.parsed}"
        " --item-categories {input.item_categories} --label {wildcards.dataset}/{wildcards.sft} --out {output}"
        " > {log} 2>&1"
