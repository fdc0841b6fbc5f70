"""The resolved settings of the LLM stages and of stage 0, each holding only what its stage uses.

The workflow passes these as rule params, so they are the rerun trigger: changing a backbone setting
(``train``, ``backbone_params``, ``eval``) never reruns stage 0 or an LLM stage, and changing an LLM
setting reruns exactly the stages that read it and what depends on them.

LLM variants: ``p2rec`` (user-level SFT) and ``instance`` (instance-level) are built in; any
``variant_catalog`` entry that declares ``sft: user|instance`` is one more, with its own folder
``llm/{pipeline}/{dataset}/<variant>/`` and its own ``llm`` overrides (``variant_catalog.<name>.llm``, merged
over ``llm`` and the dataset's override), so an ablation is a catalog entry. A variant whose categories
settings (k, kmeans_seed, kmeans_restarts, max_items) differ from the experiment's gets its own categories
folder, named by what differs (``categories_k8``); the others share ``categories/``.

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


#: ``instance.max_samples`` of a dataset that sets none: as many instances per epoch as its user-level epoch
#: has users (the equal-budget rule the real datasets declare in llm.dataset_overrides). The number is only
#: known from the prepared data, so the sft command resolves it (p2rec.llm.budget.resolve_budget)
USERS_BUDGET = "users"


def llm_config(config: dict, dataset: str, variant: str | None = None) -> dict:
    """``llm`` with the schema defaults, the dataset's ``llm.dataset_overrides.<name>`` and (``variant``) the
    variant's ``variant_catalog.<name>.llm`` overrides applied, in that order.

    ``instance.max_samples`` left null in ``llm``, in the dataset's override and in the variant's becomes
    ``USERS_BUDGET``; an integer in any is kept, and so is an explicit null in either override (the full
    instance-level epoch)."""
    schema = load_schema()["properties"]["llm"]
    merged = _deep_merge(_schema_defaults(schema), config.get("llm", {}))
    overrides = merged.pop("dataset_overrides", {}) or {}
    check_dataset_overrides(overrides, config.get("catalog", {}))
    own = overrides.get(dataset, {}) or {}
    out = _deep_merge(merged, own)
    mine = variant_overrides(config, variant) if variant is not None else {}
    out = _deep_merge(out, mine)
    explicit = any("max_samples" in (o.get("instance") or {}) for o in (own, mine))
    if out["instance"].get("max_samples") is None and not explicit:
        out["instance"]["max_samples"] = USERS_BUDGET
    return out


# ----------------------------------------------------------------------------------------------- LLM variants
#: ``llm`` keys a variant cannot override: they belong to the experiment (where the model is converted,
#: per-dataset overrides) or never change a result (checkpoints, extraction batch, threads)
VARIANT_FIXED_KEYS = ("dataset_overrides", "converted_dir", "checkpoint_every", "extract_batch_size", "threads")
#: the stages an LLM variant's item table comes from: its lineage must name them
LLM_LINEAGE = ("pretrain", "categories", "sft", "extract", "reduce")


def variant_sft_mode(config: dict, variant: str) -> str | None:
    """The SFT mode of an LLM variant (``sft`` in its catalog entry; ``p2rec`` and ``instance`` by name),
    None for a variant without fine-tuning."""
    entry = (config.get("variant_catalog") or {}).get(variant) or {}
    return entry.get("sft") or SFT_MODE.get(variant)


def llm_variant_names(config: dict) -> list[str]:
    """Every catalog entry that is an LLM variant (its name is its folder under llm/{pipeline}/{dataset}/)."""
    return [v for v in config.get("variant_catalog") or {} if variant_sft_mode(config, v)]


def variant_overrides(config: dict, variant: str) -> dict:
    """The variant's ``llm`` overrides, checked (a clear error naming the key)."""
    entry = (config.get("variant_catalog") or {}).get(variant)
    if entry is None:
        raise P2RecError(f"unknown variant '{variant}' (variant_catalog: {', '.join(config.get('variant_catalog') or {})})")
    check_variant_entry(config, variant)
    return copy.deepcopy(entry.get("llm") or {})


def check_variant_entry(config: dict, variant: str) -> None:
    """An LLM variant's entry: ``llm`` overrides against the schema of ``llm`` (less what a variant cannot
    set), an item table in its own folder, and a lineage naming the LLM stages (and ``items`` where its
    prompts show item texts)."""
    from p2rec.llm.prompt_modes import prompt_needs_items

    entry = config["variant_catalog"][variant] or {}
    where = f"variant_catalog.{variant}"
    over = entry.get("llm")
    mode = variant_sft_mode(config, variant)
    if over is not None and not mode:
        raise P2RecError(f"config key '{where}.llm': only an LLM variant takes llm overrides (declare "
                         f"'sft: user' or 'sft: instance')")
    if mode and variant.startswith("categories"):
        raise P2RecError(f"config key '{where}': an LLM variant's name is its folder beside categories/; "
                         f"choose a name that does not start with 'categories'")
    if over is not None:
        if not isinstance(over, dict):
            raise P2RecError(f"config key '{where}.llm': expected a mapping of llm keys, got {type(over).__name__}")
        for key in VARIANT_FIXED_KEYS:
            if key in over:
                raise P2RecError(f"config key '{where}.llm.{key}': set per experiment (llm.{key}), not per variant")
        schema = copy.deepcopy(load_schema()["properties"]["llm"])
        schema["properties"].pop("dataset_overrides", None)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(over), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            path = "".join(f".{p}" for p in e.absolute_path)
            raise P2RecError(f"config key '{where}.llm{path}': {e.message}")
    if mode and "sft" in entry:  # a declared variant (the built-in entries are as they always were)
        missing = [s for s in LLM_LINEAGE if s not in (entry.get("lineage") or [])]
        if missing:
            raise P2RecError(f"config key '{where}.lineage': an LLM variant's table comes from "
                             f"{', '.join(LLM_LINEAGE)}; missing {', '.join(missing)}")
        mode_of_prompt = ((over or {}).get("prompt") or {}).get("mode") or \
            ((config.get("llm") or {}).get("prompt") or {}).get("mode", "soft")
        if prompt_needs_items(mode_of_prompt) and "items" not in (entry.get("lineage") or []):
            raise P2RecError(f"config key '{where}.lineage': prompt mode '{mode_of_prompt}' shows the item text; name "
                             f"the 'items' stage too, so that its settings enter the runs' lineage")
        expected = f"llm/{{pipeline}}/{{dataset}}/{variant}/item_init_d{{hidden}}.npy"
        if entry.get("item_init") != expected:
            raise P2RecError(f"config key '{where}.item_init': an LLM variant's table is its own reduction, "
                             f"'{expected}' (got {entry.get('item_init')!r})")


def check_variant_catalog(config: dict) -> None:
    """Every LLM variant entry of the catalog (at parse time: a bad override fails ``snakemake -n``)."""
    for variant in config.get("variant_catalog") or {}:
        check_variant_entry(config, variant)


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


#: what the categories stage reads, in the order a categories folder names what differs
CATEGORY_KEYS = ("k", "kmeans_seed", "kmeans_restarts", "max_items")
CATEGORIES = "categories"
#: the folder names a categories folder can have (a wildcard constraint of the workflow)
CATEGORIES_FOLDER_PATTERN = r"categories(?:_(?:k|kmeans_seed|kmeans_restarts|max_items)\d+)*"


def categories_settings(config: dict, dataset: str, variant: str | None = None) -> dict:
    llm = llm_config(config, dataset, variant)
    return {key: llm[key] for key in CATEGORY_KEYS}


def categories_folder(config: dict, dataset: str, variant: str | None = None) -> str:
    """The categories folder a variant reads: ``categories`` where its categories settings are the
    experiment's, else ``categories`` plus each differing key and value (``categories_k8``)."""
    base, own = categories_settings(config, dataset), categories_settings(config, dataset, variant)
    return CATEGORIES + "".join(f"_{key}{int(own[key])}" for key in CATEGORY_KEYS if own[key] != base[key])


def categories_folder_settings(config: dict, dataset: str, folder: str) -> dict:
    """The settings of a categories folder (its name says what differs from the experiment's)."""
    import re

    out = categories_settings(config, dataset)
    suffix = folder[len(CATEGORIES):] if folder.startswith(CATEGORIES) else None
    pairs = re.findall(r"_(kmeans_seed|kmeans_restarts|max_items|k)(\d+)", suffix or "")
    if suffix is None or "".join(f"_{k}{v}" for k, v in pairs) != suffix:
        raise P2RecError(f"'{folder}': not a categories folder name (categories, categories_k8, ...)")
    out.update({key: int(value) for key, value in pairs})
    return out


def sft_settings(config: dict, dataset: str, mode: str, variant: str | None = None) -> dict:
    """What the SFT stage reads. ``prompt.text_tokens`` only in the text modes (filled with its default there),
    ``min_window`` only at the user level and when set: with neither, the settings are those of every run made
    before these keys existed."""
    from p2rec.llm.prompt_modes import DEFAULT_TEXT_TOKENS, prompt_needs_items

    if mode not in SFT_MODES:
        raise P2RecError(f"unknown SFT mode '{mode}' ({', '.join(SFT_MODES)})")
    llm = llm_config(config, dataset, variant)
    keys = ["model", "dtype", "attention", "shared_prefix", "device", "k", "max_items", "prompt", "lora", "lr",
            "weight_decay", "epochs", "batch_size", "seed"]
    out = {key: copy.deepcopy(llm[key]) for key in keys}
    if prompt_needs_items(out["prompt"]["mode"]):
        out["prompt"].setdefault("text_tokens", DEFAULT_TEXT_TOKENS)
    else:
        out["prompt"].pop("text_tokens", None)
    if mode == "user":
        out["loss"] = llm["loss"]
        if llm.get("min_window") is not None:
            if llm["min_window"] > llm["max_items"]:
                own = variant_overrides(config, variant) if variant is not None else {}
                where = f"variant_catalog.{variant}.llm" if "min_window" in own else "llm"
                raise P2RecError(f"config key '{where}.min_window': {llm['min_window']} is more than llm.max_items "
                                 f"({llm['max_items']}), the longest window a prompt shows")
            out["min_window"] = llm["min_window"]
    else:
        out["instance"] = copy.deepcopy(llm["instance"])
    out["mode"] = mode
    return out


def variant_sft_settings(config: dict, dataset: str, variant: str) -> dict:
    """The SFT settings of an LLM variant (its mode and overrides)."""
    mode = variant_sft_mode(config, variant)
    if not mode:
        raise P2RecError(f"variant '{variant}' has no fine-tuning (no 'sft' in variant_catalog.{variant})")
    return sft_settings(config, dataset, mode, variant)


def extract_settings(config: dict, dataset: str, variant: str | None = None) -> dict:
    llm = llm_config(config, dataset, variant)
    return {"model": llm["model"], "dtype": llm["dtype"], "attention": llm["attention"],
            "shared_prefix": llm["shared_prefix"], "device": llm["device"]}


def needs_items(config: dict, dataset: str, variant: str) -> bool:
    """Whether the variant's prompts show item texts (its SFT and extraction then read the items file)."""
    from p2rec.llm.prompt_modes import prompt_needs_items

    return prompt_needs_items(llm_config(config, dataset, variant)["prompt"]["mode"])


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


def model_input(config: dict, dataset: str, variant: str | None = None) -> list[str]:
    """The converted packaged-model folder a stage needs as input, or nothing for a hub id / folder."""
    return [config["llm"]["converted_dir"]] if llm_config(config, dataset, variant)["model"] == "packaged" else []


def model_name(config: dict, dataset: str, variant: str | None = None) -> str:
    return llm_config(config, dataset, variant)["model"]


def llm_targets(config: dict) -> list[str]:
    """Parsed-category evaluation of every configured LLM variant, and its table."""
    files = [f"results/llm/{d}/{v}/parse_eval.json" for d in config["datasets"] for v in config["variants"]
             if variant_sft_mode(config, v)]
    return files + ["results/tables/categories.csv"] if files else []
