# Helpers shared by the rules: config validation, wildcard constraints, the target list.
import json
import re

from p2rec.workflow.config import dataset_seeds, train_settings, validate_config
from p2rec.workflow.gpu import lease_shell as gpu_job  # gpu_job("cmd"): cmd runs on resources.gpu devices of its own

config.update(validate_config(config))

P2REC = "python -m p2rec"


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    dataset=_alternatives(config["catalog"]),
    backbone=_alternatives(set(config["backbones"]) | {config["pretrain"]["backbone"]}),
    variant=_alternatives(config["variant_catalog"]),
    seed=r"\d+",


def run_dir(dataset, backbone, variant, seed):
    return f"results/runs/{dataset}/{backbone}/{variant}/seed{seed}"


def run_metrics():
    return [
        f"{run_dir(d, b, v, s)}/metrics.json"
        for d in config["datasets"]
        for b in config["backbones"]
        for v in config["variants"]
        for s in dataset_seeds(config, d)
    ]


def final_targets():
    # report_targets: p2rec.report.tables via rules/report.smk (tables, plots); llm_targets: rules/llm.smk (parsed categories)
    return run_metrics() + report_targets(config) + llm_targets(config)


def data_entry(dataset):
    """The catalog entry less its training overrides."""
    return {k: v for k, v in config["catalog"][dataset].items() if k != "train"}


def settings_json(wildcards):
    """Only the settings of this run: editing anything else never retrains it."""
    return json.dumps(train_settings(config, wildcards.dataset, wildcards.backbone), sort_keys=True)


def item_init_input(wildcards):
    template = config["variant_catalog"][wildcards.variant].get("item_init")
    if not template:
        return []
    hidden = train_settings(config, wildcards.dataset, wildcards.backbone)["train"]["hidden"]
    return [template.format(dataset=wildcards.dataset, hidden=hidden)]


def item_init_flag(wildcards, input):
    return f"--item-init {input.item_init}" if input.item_init else ""
