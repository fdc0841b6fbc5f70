"""The resolved settings of the LLM stages and of stage 0, each holding only what its stage uses.

The workflow passes these as rule params, so they are the rerun trigger: changing a backbone setting
(``train``, ``backbone_params``, ``eval``) never reruns stage 0 or an LLM stage, and changing an LLM
setting reruns exactly the stages that read it and what depends on them.

Stage 0 is configured by ``pretrain`` only: the schema defaults of ``train`` and ``eval``, the dataset's
``catalog.<name>.train`` overrides (properties of the data, e.g. max_len 200 on ML-1M), then
``pretrain.train`` and ``pretrain.params``.
"""
from __future__ import annotations

import copy

import jsonschema

from p2rec import P2RecError
from p2rec.workflow.config import load_schema, train_settings

SFT_MODES = ("user", "instance")
#: the output folder of each SFT mode under <work>/llm/{dataset}/ (also the variant names)
SFT_DIRS = {"user": "p2rec", "instance": "instance"}


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _schema_defaults(schema: dict) -> dict:
    out = {}
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and "properties" in sub:
            out[key] = _deep_merge(_schema_defaults(sub), out.get(key) or {})
    return out


def llm_config(config: dict, dataset: str) -> dict:
    """``llm`` with the schema defaults and the dataset's ``llm.dataset_overrides.<name>`` applied."""
    schema = load_schema()["properties"]["llm"]
    merged = _deep_merge(_schema_defaults(schema), config.get("llm", {}))
    overrides = merged.pop("dataset_overrides", {}) or {}
    check_dataset_overrides(overrides, config.get("catalog", {}))
    return _deep_merge(merged, overrides.get(dataset, {}) or {})


def check_dataset_overrides(overrides: dict, catalog: dict) -> None:
    """Overrides are partial ``llm`` sections: unknown datasets, unknown keys and wrong types fail."""
    schema = copy.deepcopy(load_schema()["properties"]["llm"])
    schema["properties"].pop("dataset_overrides", None)
    validator = jsonschema.Draft202012Validator(schema)
    for name, override in overrides.items():
        if name not in catalog:
            raise P2RecError(f"config key 'llm.dataset_overrides.{name}': unknown dataset '{name}' "
                             f"(known: {', '.join(sorted(catalog))})")
        errors = sorted(validator.iter_errors(override or {}), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = "".join(f".{p}" for p in e.absolute_path)
            raise P2RecError(f"config key 'llm.dataset_overrides.{name}{where}': {e.message}")


def categories_settings(config: dict, dataset: str) -> dict:
    llm = llm_config(config, dataset)
    return {"k": llm["k"], "kmeans_seed": llm["kmeans_seed"], "kmeans_restarts": llm["kmeans_restarts"],
            "max_items": llm["max_items"]}


def sft_settings(config: dict, dataset: str, mode: str) -> dict:
    if mode not in SFT_MODES:
        raise P2RecError(f"unknown SFT mode '{mode}' ({', '.join(SFT_MODES)})")
    llm = llm_config(config, dataset)
    keys = ["model", "dtype", "attention", "shared_prefix", "device", "k", "max_items", "prompt", "lora", "lr",
            "weight_decay", "epochs", "batch_size", "seed"]
    out = {key: copy.deepcopy(llm[key]) for key in keys}
    if mode == "user":
        out["loss"] = llm["loss"]
    else:
        out["instance"] = copy.deepcopy(llm["instance"])
    out["mode"] = mode
    return out


def extract_settings(config: dict, dataset: str) -> dict:
    llm = llm_config(config, dataset)
    return {"model": llm["model"], "dtype": llm["dtype"], "attention": llm["attention"],
            "shared_prefix": llm["shared_prefix"], "device": llm["device"]}


def reduce_settings(hidden: int) -> dict:
    from p2rec.models.base import SequentialBackbone

    return {"hidden": int(hidden), "init_std": SequentialBackbone.init_std}


def runtime_settings(config: dict) -> dict:
    """Options that never change a result (checkpoint frequency, batch size of extraction, threads)."""
    llm = _deep_merge(_schema_defaults(load_schema()["properties"]["llm"]), config.get("llm", {}))
    check_dataset_overrides(llm.get("dataset_overrides", {}) or {}, config.get("catalog", {}))
    return {"checkpoint_every": llm["checkpoint_every"], "extract_batch_size": llm["extract_batch_size"],
            "threads": llm["threads"]}


def requested_gpus(overrides, rule: str, default: int = 1) -> int:
    """GPUs asked for a rule with ``--set-resources RULE:gpu=N`` (``workflow.resource_settings
    .overwrite_resources``), else ``default``: known when the workflow is parsed, so the rule's command
    can be chosen from it."""
    mapping = (overrides or {}).get(rule) or {}
    try:
        value = mapping["gpu"]  # a dict, or snakemake's Resources (whose get() takes no default)
    except KeyError:
        return default
    value = getattr(value, "raw", value)  # a parsed snakemake Resource
    if callable(value):
        return default
    try:
        gpus = int(value)
    except (TypeError, ValueError):
        raise P2RecError(f"--set-resources {rule}:gpu={value!r}: not a whole number") from None
    if gpus < 0:
        raise P2RecError(f"--set-resources {rule}:gpu={gpus}: must be >= 0")
    return gpus


def sft_launcher(gpus: int) -> str:
    """The start of the sft command for a job that declares ``gpus`` (in slot units, p2rec.workflow.gpu).

    One device (or the CPU): ``python -m p2rec``, the command text of every earlier run, so nothing reruns.
    Several devices: torchrun with one process per leased device (data-parallel LoRA fine-tuning,
    p2rec.llm.sft); ``--standalone`` picks a free rendezvous port for each job. With GPU slots a whole device
    is several slot units, so the process count is the device count, not the declared amount."""
    from p2rec.workflow.gpu import devices_for

    devices = devices_for(int(gpus)) if int(gpus) > 0 else 0
    if devices <= 1:
        return "python -m p2rec"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {devices} -m p2rec"
    return "python -m torch.distributed.run --standalone --nproc_per_node {resources.gpu} -m p2rec"


def pretrain_settings(config: dict, dataset: str) -> dict:
    """Stage-0 settings: independent of the downstream ``train``/``eval``/``backbone_params`` sections."""
    schema = load_schema()["properties"]
    pre = config["pretrain"]
    from p2rec.models.registry import BACKBONES

    if pre["backbone"] not in BACKBONES:
        raise P2RecError(f"config key 'pretrain.backbone': unknown backbone '{pre['backbone']}'")
    unknown = set(pre.get("params", {}) or {}) - set(BACKBONES[pre["backbone"]].defaults)
    if unknown:
        raise P2RecError(f"config key 'pretrain.params': unknown parameter(s) {sorted(unknown)} of "
                         f"'{pre['backbone']}' (known: {sorted(BACKBONES[pre['backbone']].defaults)})")
    train = _deep_merge(_schema_defaults(schema["train"]), config["catalog"][dataset].get("train", {}) or {})
    train = _deep_merge(train, pre.get("train", {}) or {})
    isolated = {
        "train": train,
        "eval": _schema_defaults(schema["eval"]),
        "catalog": {dataset: {k: v for k, v in config["catalog"][dataset].items() if k != "train"}},
        "backbone_params": {pre["backbone"]: dict(pre.get("params", {}) or {})},
    }
    return train_settings(isolated, dataset, pre["backbone"])


# ----------------------------------------------------------------------------------------------- workflow helpers
#: SFT output folder (= variant name) -> SFT mode
SFT_MODE = {folder: mode for mode, folder in SFT_DIRS.items()}


def model_input(config: dict, dataset: str) -> list[str]:
    """The converted packaged-model folder a stage needs as input, or nothing for a hub id / folder."""
    return [config["llm"]["converted_dir"]] if llm_config(config, dataset)["model"] == "packaged" else []


def llm_targets(config: dict) -> list[str]:
    """Parsed-category evaluation of every configured LLM variant, and its table."""
    files = [f"results/llm/{d}/{v}/parse_eval.json" for d in config["datasets"] for v in config["variants"]
             if v in SFT_MODE]
    return files + ["results/tables/categories.csv"] if files else []
