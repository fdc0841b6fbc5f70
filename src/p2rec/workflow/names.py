"""Dataset, backbone and variant names become folder names (``data/{dataset}/``, ``logs/prepare/{dataset}.log``,
``runs/{dataset}/{backbone}/{variant}/``), so they are checked when the configuration is read: letters,
digits, ``_``, ``-`` and ``.``, starting with a letter or digit, without ``..``. A name like ``../evil``
would otherwise plan files outside the experiment's folders.

Called by the Snakefile (rules/common.smk) and ``check-config`` before the schema validation, and by the
prepare stage for the name it is given. It is not part of ``workflow/config.py`` because that module's
source is part of every stage's code version, and a check that changes no result must not make runs stale.
"""
from __future__ import annotations

import re
from typing import Any

from p2rec import P2RecError

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def name_problem(key: str, name: Any, kind: str) -> str | None:
    """Why ``name`` cannot name a folder (a path separator, '..', a leading dot or dash, ...), or None."""
    if isinstance(name, str) and _SAFE_NAME.fullmatch(name) and ".." not in name:
        return None
    return (f"config key '{key}': {name!r} is not a safe {kind} name (it names folders: letters, digits, '_', '-' "
            f"and '.', starting with a letter or digit, no '..')")


def check_names(config: Any) -> None:
    """Every dataset, backbone and variant name of a (not yet validated) configuration; one error naming
    each unsafe one by its key."""
    if not isinstance(config, dict):
        return  # the schema validation says what is wrong
    named = []
    for key, kind in (("catalog", "dataset"), ("variant_catalog", "variant"), ("dataset_seeds", "dataset"),
                      ("backbone_params", "backbone")):
        if isinstance(config.get(key), dict):
            named += [(key, name, kind) for name in config[key]]
    for key, kind in (("datasets", "dataset"), ("backbones", "backbone"), ("variants", "variant")):
        if isinstance(config.get(key), list):
            named += [(f"{key}[{i}]", name, kind) for i, name in enumerate(config[key])]
    problems = [p for p in (name_problem(*args) for args in named) if p]
    if problems:
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(problems))
