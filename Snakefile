# p2rec: LLM-enhanced sequential recommendation benchmark. Thin by design: logic lives in src/p2rec.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


# built from the configured names, so that {dataset} never matches a path fragment (rules/common.smk)
wildcard_constraints:
    dataset=_alternatives(config["catalog"]),
    backbone=_alternatives(set(config["backbones"]) | {config["pretrain"]["backbone"]}),
    variant=_alternatives(config["variant_catalog"]),
    seed=r"\d+",
    pipeline=r"shared|seed\d+",


include: "rules/data.smk"
include: "rules/items.smk"
include: "rules/pretrain.smk"
include: "rules/llm.smk"
include: "rules/text_init.smk"
include: "rules/train.smk"
include: "rules/recbole.smk"
include: "rules/report.smk"
include: "rules/publish.smk"


rule all:
    input:
        final_targets(),
    default_target: True
