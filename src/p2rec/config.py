"""Configuration: JSON-schema validation with defaults, and the resolved settings of each stage.

The same functions serve the Snakefile (at parse time) and the CLI, so a typo fails `snakemake -n`
with a message that names the key.
"""
from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import jsonschema
import yaml

from p2rec import P2RecError


def load_schema() -> dict:
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
    if isinstance(config.get("seeds"), list):
        config["seeds"] = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in config["seeds"]]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_key_path(e.absolute_path)}': {e.message}" for e in errors]
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(lines))
    _fill_defaults(schema, config)
    _check_names(config)
    return config


def _check_names(config: dict) -> None:
    from p2rec.models.registry import BACKBONES

    problems = []
    for i, name in enumerate(config["datasets"]):
        if name not in config.get("catalog", {}):
            problems.append(
                f"config key 'datasets[{i}]': unknown dataset '{name}' (no entry in 'catalog'; "
                f"known: {', '.join(sorted(config.get('catalog', {}))) or 'none'})"
            )
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
        unknown = set(params) - set(BACKBONES[name].defaults)
        if unknown:
            problems.append(
                f"config key 'backbone_params.{name}': unknown parameter(s) {sorted(unknown)} "
                f"(known: {sorted(BACKBONES[name].defaults)})"
            )
    for name, entry in config.get("catalog", {}).items():
        if entry["source"] != "synthetic" and not entry.get("file") and not entry.get("url"):
            problems.append(f"config key 'catalog.{name}': source '{entry['source']}' needs 'file'")
        unknown_train = set(entry.get("train", {})) - set(load_schema()["properties"]["train"]["properties"])
        if unknown_train:
            problems.append(f"config key 'catalog.{name}.train': unknown key(s) {sorted(unknown_train)}")
    if problems:
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(problems))


def train_settings(config: dict, dataset: str, backbone: str) -> dict:
    """The resolved settings of one backbone training: global train + dataset overrides + backbone params."""
    from p2rec.models.registry import BACKBONES

    settings = dict(config["train"])
    settings.update(config["catalog"][dataset].get("train", {}))
    model = dict(BACKBONES[backbone].defaults)
    model.update(config.get("backbone_params", {}).get(backbone, {}))
    return {"train": settings, "model": model, "eval": dict(config["eval"]), "backbone": backbone}
