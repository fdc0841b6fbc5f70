"""Configuration: JSON-schema validation with defaults, and the resolved settings of each stage.

The same functions serve the Snakefile (at parse time) and the CLI, so a typo fails `snakemake -n`
with a message that names the key.
"""
from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import jsonschema
import yaml

from p2rec import P2RecError


def load_schema() -> dict:
    """The configuration schema (a fresh copy: callers may change it). Parsed once per process: the workflow
    asks for it per job while building the DAG, and parsing the YAML each time cost seconds."""
    return copy.deepcopy(_parsed_schema())


@functools.lru_cache(maxsize=1)
def _parsed_schema() -> dict:
    text = resources.files("p2rec").joinpath("schema/config.schema.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _fill_defaults(schema: dict, instance: Any) -> None:
    """Fill defaults of nested objects in place (jsonschema validates but never fills)."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(sub, instance[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, value)


def validate_config(config: dict) -> dict:
    """Validate ``config`` against the schema and the registries; return a copy with defaults filled."""
    schema = load_schema()
    config = copy.deepcopy(dict(config))
    # `snakemake --config 'seeds=[1,2]'` hands list items over as strings
    def as_ints(seeds):
        return [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in seeds]

    if isinstance(config.get("seeds"), list):
        config["seeds"] = as_ints(config["seeds"])
    if isinstance(config.get("dataset_seeds"), dict):
        config["dataset_seeds"] = {d: as_ints(v) if isinstance(v, list) else v
                                   for d, v in config["dataset_seeds"].items()}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_key_path(e.absolute_path)}': {e.message}" for e in errors]
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(lines))
    _fill_defaults(schema, config)
    _check_names(config)
    return config


def _check_names(config: dict) -> None:
    from p2rec.models.registry import BACKBONES, backbone_parameters, build_backbone

    problems = []
    for i, name in enumerate(config["datasets"]):
        if name not in config.get("catalog", {}):
            problems.append(
                f"config key 'datasets[{i}]': unknown dataset '{name}' (no entry in 'catalog'; "
                f"known: {', '.join(sorted(config.get('catalog', {}))) or 'none'})"
            )
    for name in config.get("dataset_seeds", {}):
        if name not in config.get("catalog", {}):
            problems.append(f"config key 'dataset_seeds.{name}': unknown dataset '{name}' (no entry in 'catalog')")
    for i, name in enumerate(config["backbones"]):
        if name not in BACKBONES:
            problems.append(
                f"config key 'backbones[{i}]': unknown backbone '{name}' (known: {', '.join(sorted(BACKBONES))})"
            )
    if config["pretrain"]["backbone"] not in BACKBONES:
        problems.append(f"config key 'pretrain.backbone': unknown backbone '{config['pretrain']['backbone']}'")
    variants = config.get("variant_catalog", {})
    for i, name in enumerate(config["variants"]):
        if name not in variants:
            problems.append(
                f"config key 'variants[{i}]': unknown variant '{name}' (known: {', '.join(sorted(variants)) or 'none'})"
            )
    for name, params in config.get("backbone_params", {}).items():
        if name not in BACKBONES:
            problems.append(f"config key 'backbone_params.{name}': unknown backbone '{name}'")
            continue
        unknown = set(params) - set(backbone_parameters(name))
        if unknown:
            problems.append(
                f"config key 'backbone_params.{name}': unknown parameter(s) {sorted(unknown)} "
                f"(known: {backbone_parameters(name)})"
            )
            continue
        # the values too, by the backbone's own checks on a two-item model: a bad value fails here, when the
        # Snakefile is parsed, not in the first training job
        try:
            build_backbone(name, 2, config["train"]["hidden"], config["train"]["max_len"], **params)
        except P2RecError as err:
            problems.append(str(err))
        except (TypeError, ValueError, RuntimeError) as err:
            problems.append(f"config key 'backbone_params.{name}': {err}")
    for name, entry in config.get("catalog", {}).items():
        if entry["source"] != "synthetic" and not entry.get("file") and not entry.get("url"):
            problems.append(f"config key 'catalog.{name}': source '{entry['source']}' needs 'file'")
        # per-dataset overrides obey the train section's types and bounds (e.g. max_len >= 1), no defaults
        override_schema = {k: v for k, v in load_schema()["properties"]["train"].items() if k != "default"}
        for err in jsonschema.Draft202012Validator(override_schema).iter_errors(entry.get("train", {})):
            problems.append(f"config key '{_key_path(['catalog', name, 'train', *err.absolute_path])}': {err.message}")
    if problems:
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(problems))


def dataset_seeds(config: dict, dataset: str) -> list[int]:
    """The seeds the grid runs on ``dataset``: its entry in 'dataset_seeds', else 'seeds'. ``config`` is a
    configuration or the tables' grid (``report_context(...)['grid']``), which has the same two keys."""
    return list((config.get("dataset_seeds") or {}).get(dataset, config.get("seeds", [])))


def train_settings(config: dict, dataset: str, backbone: str) -> dict:
    """The resolved settings of one backbone training: global train + dataset overrides + backbone params."""
    from p2rec.models.registry import BACKBONES

    settings = dict(config["train"])
    settings.update(config["catalog"][dataset].get("train", {}))
    model = dict(BACKBONES[backbone].defaults)
    model.update(config.get("backbone_params", {}).get(backbone, {}))
    return {"train": settings, "model": model, "eval": dict(config["eval"]), "backbone": backbone}


def _section_errors(schema: dict, instance: Any, prefix: list) -> list[str]:
    schema = {k: v for k, v in schema.items() if k != "default"}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"config key '{_key_path([*prefix, *e.absolute_path])}': {e.message}" for e in errors]


def validate_catalog_entry(name: str, entry: Any) -> dict:
    """One catalog entry as the prepare stage receives it (the CLI takes it as JSON): the same schema
    checks as the config, defaults filled; errors name ``catalog.<name>.<key>``."""
    schema = load_schema()["properties"]["catalog"]["additionalProperties"]
    problems = _section_errors(schema, entry, ["catalog", name])
    if problems:  # one line: the CLI prints it as `p2rec prepare: error: ...`
        raise P2RecError("invalid configuration: " + "; ".join(problems))
    entry = copy.deepcopy(entry)
    _fill_defaults(schema, entry)
    if entry["source"] not in ("synthetic",) and not entry.get("file") and not entry.get("url"):
        raise P2RecError(f"config key 'catalog.{name}.file': source '{entry['source']}' needs 'file'")
    return entry


def check_settings(settings: Any) -> dict:
    """The resolved settings of one training run as the train stage receives them (the CLI takes them as
    JSON): train/eval sections checked against the schema (defaults filled), backbone and its parameters
    against the registry. Keys are named as in the config (``train.*`` may come from
    ``catalog.<dataset>.train``, ``model.*`` from ``backbone_params.<backbone>``)."""
    from p2rec.models.registry import BACKBONES, backbone_parameters

    if not isinstance(settings, dict):
        raise P2RecError(f"training settings: expected a JSON object, got {type(settings).__name__}")
    props = load_schema()["properties"]
    settings = copy.deepcopy(settings)
    problems = [f"training settings: unknown key '{k}' (known: backbone, train, eval, model)"
                for k in sorted(set(settings) - {"backbone", "train", "eval", "model"})]
    backbone = settings.get("backbone")
    if backbone not in BACKBONES:
        problems.append(f"config key 'backbones': unknown backbone {backbone!r} (known: {', '.join(sorted(BACKBONES))})")
    for section in ("train", "eval"):
        settings.setdefault(section, {})
        problems += _section_errors(props[section], settings[section], [section])
    model = settings.setdefault("model", {})
    if not isinstance(model, dict):
        problems.append(f"config key 'backbone_params.{backbone}': expected a mapping, got {type(model).__name__}")
    elif backbone in BACKBONES:
        unknown = sorted(set(model) - set(backbone_parameters(backbone)))
        if unknown:
            problems.append(f"config key 'backbone_params.{backbone}': unknown parameter(s) {unknown} "
                            f"(known: {backbone_parameters(backbone)})")
    if problems:  # one line: the CLI prints it as `p2rec train: error: ...`
        raise P2RecError("invalid training settings: " + "; ".join(problems))
    for section in ("train", "eval"):
        _fill_defaults(props[section], settings[section])
    settings["model"] = {**BACKBONES[backbone].defaults, **model}
    return settings
