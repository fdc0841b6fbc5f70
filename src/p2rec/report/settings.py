"""The ``report`` settings and the context the tables need from a workflow configuration."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from p2rec import P2RecError

#: the seed-level test of the tables (docs/statistics.md); the user-level tests are within-pair analyses
SEED_TEST = "seeds_ttest"
USER_TESTS = ("users_ttest", "users_permutation")
#: names the user-level tests had before the seed-level test became the default
LEGACY_TESTS = {"ttest": "users_ttest", "permutation": "users_permutation"}


def report_settings(report: dict | None = None) -> dict:
    """The ``report`` block with schema defaults filled and validated (errors name the key).

    A legacy test name (``ttest``, ``permutation``) is read as the user-level test it always was
    (``users_ttest``, ``users_permutation``): a within-pair analysis that never marks the main table."""
    import jsonschema

    from p2rec.workflow.config import load_schema

    schema = load_schema()["properties"]["report"]
    settings = copy.deepcopy(dict(report or {}))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(settings))
    if errors:
        raise P2RecError("invalid report settings:\n  " + "\n  ".join(
            f"config key 'report.{'.'.join(map(str, e.absolute_path))}': {e.message}" for e in errors))
    for key, sub in schema.get("properties", {}).items():
        if key not in settings and "default" in sub:
            settings[key] = copy.deepcopy(sub["default"])
    settings["test"] = LEGACY_TESTS.get(settings.get("test", SEED_TEST), settings.get("test", SEED_TEST))
    return settings


def table_metrics(settings: dict) -> list[str]:
    return [f"{m}@{k}" for k in settings["ks"] for m in settings["metrics"]]


def report_context(config: dict) -> dict:
    """What the tables need from a (validated) workflow configuration: grid order, protocol, report, LLM."""
    return {
        "grid": {**{key: list(config[key]) for key in ("datasets", "backbones", "variants", "seeds")},
                 "dataset_seeds": {d: list(s) for d, s in config.get("dataset_seeds", {}).items()},
                 "variant_seeds": {v: list(s) for v, s in config.get("variant_seeds", {}).items()}},
        "eval": {k: config["eval"][k] for k in ("mode", "mask_history", "n_sampled") if k in config["eval"]},
        "report": report_settings(config.get("report")),
        "llm": config.get("llm") or {},
        # the efficiency captions say whose stage records they show when every seed has its own stages
        "pipeline_seeds": bool(config.get("pipeline_seeds", False)),
    }


def read_context(text_or_path: str | None) -> dict:
    """A context given on the command line as JSON text or as a path to a JSON/YAML configuration."""
    if not text_or_path:
        return {}
    path = Path(text_or_path)
    if not text_or_path.lstrip().startswith("{") and path.exists():
        import yaml

        from p2rec.workflow.config import validate_config

        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise P2RecError(f"{path}: not valid YAML ({err})") from None
        return report_context(validate_config(raw))
    try:
        return json.loads(text_or_path)
    except json.JSONDecodeError as err:
        raise P2RecError(f"--context: not valid JSON and not a file ({err})") from None
