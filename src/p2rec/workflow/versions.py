"""Code versions derived from the code: each stage's version is a hash of the source files it runs.

A stage's sources are the import closure (inside ``p2rec``) of its entry modules, found by reading their
``import`` statements (function-level imports included), so a new helper module a stage starts to import
counts without anyone keeping a list up to date. Backbone modules are the exception: the model registry
imports every backbone, but a run executes one, so the closure leaves all backbone modules out and adds
the run's own. Editing ``models/gru4rec.py`` therefore makes GRU4Rec runs stale and nothing else; editing
``llm/sft.py`` makes the SFT, the extraction and every run that starts from their item table stale.

The command-line layer (``cli``, ``commands``, ``*/commands.py``) and the package root are not part of any
stage: they parse arguments and name errors, they do not compute results.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "p2rec"
ROOT = Path(__file__).resolve().parents[1]  # src/p2rec

#: entry modules of each stage; the closure adds what they import
STAGE_ENTRIES = {
    "prepare": ["p2rec.data.prepare"],
    "train": ["p2rec.training.runner"],  # + the run's backbone module
    "categories": ["p2rec.llm.categories"],
    "sft": ["p2rec.llm.sft"],
    "extract": ["p2rec.llm.extract"],
    "reduce": ["p2rec.llm.reduce"],
    "convert": ["p2rec.llm.loading"],
    "parse": ["p2rec.llm.categories"],
    "attribute_eval": ["p2rec.llm.attribute_eval"],
    "items": ["p2rec.data.item_sources"],  # item text and categories (prepare-items)
    "text_init": ["p2rec.baselines.text_init"],  # the text_init baseline's embeddings
    # RecBole runs: the adapter and the worker RecBole's interpreter runs as a file (so imported by nobody)
    "recbole": ["p2rec.bench.recbole_runs", "p2rec.bench.recbole_worker"],
    # tables, plots and the calibration table: no run depends on them (so no run goes stale), but the rules
    # that build them take this version as a param, so editing the report code rebuilds the tables
    "report": ["p2rec.report.tables", "p2rec.report.plots", "p2rec.report.calibration"],
}
#: never part of a stage's version (see the module docstring)
_EXCLUDED = {"p2rec", "p2rec.cli", "p2rec.commands", "p2rec.__main__"}


def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    path = _module_file(module)
    stat = path.stat()
    return _imports_of(module, path, stat.st_mtime_ns, stat.st_size)


# keyed by the file's mtime and size too, so an edited file is read again (the workflow asks once per job)
@functools.lru_cache(maxsize=None)
def _imports_of(module: str, path: Path, mtime_ns: int, size: int) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            # `from p2rec.models import sasrec` imports a module, `from p2rec.io import read_json` a name
            found.update(f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}"))
    return {m for m in found if _module_file(m)}


@functools.lru_cache(maxsize=None)
def backbone_modules() -> dict[str, str]:
    """Backbone name -> the module that defines it (from the registry, so a new backbone needs no entry here)."""
    from p2rec.models.registry import BACKBONES

    return {name: cls.__module__ for name, cls in BACKBONES.items()}


def _excluded(module: str) -> bool:
    return module in _EXCLUDED or module.endswith(".commands") or module in backbone_modules().values()


def stage_sources(stage: str, backbone: str | None = None) -> list[Path]:
    """The source files whose content makes up a stage's code version."""
    if stage not in STAGE_ENTRIES:
        raise KeyError(f"unknown stage {stage!r} (known: {', '.join(sorted(STAGE_ENTRIES))})")
    todo = list(STAGE_ENTRIES[stage])
    if stage == "train":
        if backbone not in backbone_modules():
            raise KeyError(f"unknown backbone {backbone!r} (known: {', '.join(sorted(backbone_modules()))})")
        todo.append(backbone_modules()[backbone])
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(m for m in _imports(module) if not _excluded(m) and m not in seen)
    # a package's modules import through its __init__ (e.g. the registry's backbone list): include them
    return sorted({_module_file(m) for m in seen})


def _digest(files: list[Path]) -> str:
    return _digest_of(tuple((p, p.stat().st_mtime_ns, p.stat().st_size) for p in files))


@functools.lru_cache(maxsize=None)
def _digest_of(files: tuple) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def stage_version(stage: str, backbone: str | None = None) -> str:
    """e.g. ``train:sasrec-3f2a9c1b0d4e``: a rule param (the rerun trigger) and part of each run's provenance."""
    name = f"{stage}:{backbone}" if backbone else stage
    return f"{name}-{_digest(stage_sources(stage, backbone))}"


def version_key(stage: str, backbone: str | None = None) -> str:
    return f"{stage}:{backbone}" if backbone else stage


def current_version(key: str) -> str:
    """The current version under a recorded key; ``pretrain:<b>`` (stage 0) is the trainer of backbone <b>."""
    stage, _, backbone = key.partition(":")
    if stage == "pretrain" and backbone:
        return stage_version("train", backbone)
    return stage_version(stage, backbone or None)


def stale_stages(code_versions: dict) -> list[str]:
    """The stages of a recorded ``{key: version}`` whose version differs from the current checkout's."""
    stale = []
    for key, recorded in sorted((code_versions or {}).items()):
        try:
            if current_version(key) != recorded:
                stale.append(key)
        except KeyError:  # a stage or backbone that no longer exists
            stale.append(key)
    return stale
