"""Experiments: where their working files and published results live, what a run's lineage is, and the
publish / restore / status steps.

An experiment is one published result set, made by ``snakemake --configfile experiments/<name>.yaml``.
Its working files (checkpoints, hidden states, logs, per-run scratch) go to ``<work_dir>/<name>/`` (ignored
by git); the publish rule copies the compact ones to ``<results_dir>/<name>/`` with a MANIFEST.json.

A run's *lineage* is everything its numbers depend on that the workflow knows before running it: its
settings and seed, the dataset entry (with its checksum), and the code version and settings of every stage
that made its item table. Its hash is recorded in the run's ``provenance.json``; a published run with the
lineage the current code and configuration give can be restored instead of retrained.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from p2rec import P2RecError
from p2rec.io import read_json, write_json, write_text
from p2rec.workflow.versions import STAGE_ENTRIES, stage_version, stale_stages, version_key

#: the files of one backbone run (all published; ``provenance.json`` carries the lineage)
RUN_FILES = ("metrics.json", "ranks.csv.gz", "timing.json", "config.json", "history.csv", "provenance.json")
MANIFEST = "MANIFEST.json"
#: train settings that change how a run executes, not what it computes (left out of the lineage)
RUNTIME_KEYS = ("threads", "device", "eval_batch_size", "checkpoint_every")
INDEX = "INDEX.md"


# ------------------------------------------------------------------------------------------------ names, paths
def experiment_name(config: dict) -> str:
    return config["experiment"]["name"]


def work_root(config: dict) -> str:
    return f"{config['work_dir']}/{experiment_name(config)}"


def published_root(config: dict) -> str:
    return f"{config['results_dir']}/{experiment_name(config)}"


def restore_roots(config: dict) -> list[str]:
    """Published folders a run may be restored from, in order: this experiment's (restore_published), then
    those of experiment.restore_from."""
    experiment = config["experiment"]
    own = [published_root(config)] if experiment.get("restore_published") else []
    return own + [f"{config['results_dir']}/{name}" for name in experiment.get("restore_from") or []]


def published_record(config: dict, rel: str) -> str | None:
    """The first published copy of a stage record among the folders runs are restored from, if any."""
    return next((f"{root}/{rel}" for root in restore_roots(config) if (Path(root) / rel).is_file()), None)


def experiment_relative(config: dict, path: str) -> str:
    """A file of the experiment relative to its working (or published) folder, or to a published folder it
    restores from: where publish puts it."""
    for root in (work_root(config), published_root(config), *restore_roots(config)):
        if path.startswith(root + "/"):
            return path[len(root) + 1:]
    return path


def check_experiment(config: dict, workflow_dir: str | os.PathLike = ".") -> None:
    """An experiment is named by its config file, and its grid stays within the datasets it declares."""
    name = experiment_name(config)
    folder = Path(workflow_dir) / "experiments"
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    if name not in known:
        raise P2RecError(f"config key 'experiment.name': unknown experiment '{name}' (no {folder / (name + '.yaml')}; "
                         f"known: {', '.join(known) or 'none'})")
    calibration = config.get("calibration") or {}
    for key in ("method", "planted"):
        variant = calibration.get(key)
        if variant is not None and variant not in config["variants"]:
            raise P2RecError(f"config key 'calibration.{key}': variant '{variant}' is not in the grid's variants "
                             f"({', '.join(config['variants'])})")
    from p2rec.workflow.seeds import check_variant_seeds

    check_variant_seeds(config)
    declared = config["experiment"].get("datasets")
    if declared is not None:
        for i, dataset in enumerate(config["datasets"]):
            if dataset not in declared:
                raise P2RecError(f"config key 'datasets[{i}]': dataset '{dataset}' is not declared by experiment "
                                 f"'{name}' (experiment.datasets: {', '.join(declared)})")


def export_package_path(workflow_dir) -> None:
    """Put this checkout's src/ on PYTHONPATH for the jobs: a job in a conda environment built from envs/
    (which cannot install the package by a relative path) then imports p2rec from here."""
    src = str(Path(workflow_dir) / "src")
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])


#: the grid keys a command line may narrow (``--config 'datasets=["beauty"]'``); the manifest names them
GRID_KEYS = ("datasets", "backbones", "variants", "seeds", "dataset_seeds", "variant_seeds")


def canonical_command(config: dict, root: str | os.PathLike = ".") -> str:
    """The command that regenerates this publish: the experiment's config file, plus a ``--config`` for each
    grid key that differs from what ``config.yaml`` and the experiment file declare (a slice of the grid).
    Runtime overrides (threads, devices) are left out: they change no result."""
    import yaml

    name = experiment_name(config)
    command = f"snakemake --cores all --configfile experiments/{name}.yaml"
    declared: dict = {}
    for path in (Path(root) / "config.yaml", Path(root) / "experiments" / f"{name}.yaml"):
        if path.is_file():
            declared.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    narrowed = [f"'{key}={json.dumps(config[key], separators=(',', ':'))}'" for key in GRID_KEYS
                if key in config and key in declared and config[key] != declared[key]]
    return " ".join([command, "--config", *narrowed]) if narrowed else command


# ------------------------------------------------------------------------------------------------ pipeline seeds
SHARED = "shared"


def pipeline_name(config: dict, seed) -> str:
    """The folder of the upstream stages (stage 0, categories, SFT, extraction) a run of this seed uses:
    ``shared`` (one per dataset, the default) or, with ``pipeline_seeds``, ``seed<N>`` of its own."""
    return f"seed{int(seed)}" if config.get("pipeline_seeds") else SHARED


def pipeline_config(config: dict, pipeline: str) -> dict:
    """The configuration the upstream stages of ``pipeline`` run with: for ``seed<N>``, N seeds stage 0, the
    k-means categories, the SFT and its instance sample, so their randomness enters the run-to-run variance."""
    if pipeline == SHARED:
        return config
    seed = int(pipeline[len("seed"):])
    out = json.loads(json.dumps(config))
    out["pretrain"]["seed"] = seed
    llm = out.setdefault("llm", {})
    llm.update(seed=seed, kmeans_seed=seed)
    llm["instance"] = {**(llm.get("instance") or {}), "sample_seed": seed}
    variant_llm = [entry["llm"] for entry in (out.get("variant_catalog") or {}).values()
                   if isinstance(entry, dict) and isinstance(entry.get("llm"), dict)]
    # neither a dataset's override nor an LLM variant's may undo it
    for override in [*(llm.get("dataset_overrides") or {}).values(), *variant_llm]:
        for key in ("seed", "kmeans_seed"):
            (override or {}).pop(key, None)
        if isinstance((override or {}).get("instance"), dict):
            override["instance"].pop("sample_seed", None)
    return out


# ------------------------------------------------------------------------------------------------ lineage
def _stage_settings(config: dict, stage: str, dataset: str, variant: str, hidden: int) -> dict:
    from p2rec.llm import settings as llm

    if stage == "pretrain":
        return {"settings": llm.pretrain_settings(config, dataset), "seed": config["pretrain"]["seed"]}
    # an LLM variant's stages run with its own llm overrides (variant_catalog.<name>.llm; none for p2rec and
    # instance, whose settings are the experiment's)
    if stage == "categories":
        return llm.categories_settings(config, dataset, variant)
    if stage == "sft":
        if not llm.variant_sft_mode(config, variant):
            raise P2RecError(f"config key 'variant_catalog.{variant}.lineage': 'sft' needs an LLM variant (one that "
                             f"declares 'sft: user' or 'sft: instance', or p2rec / instance)")
        return llm.variant_sft_settings(config, dataset, variant)
    if stage == "extract":
        return llm.extract_settings(config, dataset, variant)
    if stage == "reduce":
        return llm.reduce_settings(hidden)
    if stage == "items":  # the item text: its catalog keys (never part of the sequence data's identity)
        from p2rec.data.item_sources import item_settings

        return item_settings(config["catalog"][dataset])
    if stage == "text_init":
        from p2rec.baselines.text_init import text_init_settings

        return text_init_settings(config)
    raise P2RecError(f"unknown lineage stage {stage!r}")


def data_identity(entry: dict) -> dict:
    """A catalog entry less what does not shape the sequence data: its training overrides and its item text
    (``items``, ``items_from``; a variant that reads the text names the ``items`` stage in its lineage)."""
    from p2rec.data.item_sources import ITEM_KEYS

    return {k: v for k, v in entry.items() if k != "train" and k not in ITEM_KEYS}


def run_lineage(config: dict, dataset: str, backbone: str, variant: str, seed: int) -> dict:
    """Code versions and settings of a run and of every stage upstream of it, with their hash."""
    from p2rec.workflow.config import train_settings

    settings = train_settings(config, dataset, backbone)
    hidden = settings["train"]["hidden"]
    pipeline = pipeline_name(config, seed)
    upstream_config = pipeline_config(config, pipeline)
    # how a run is executed never changes its numbers (as in the trainer's checkpoint fingerprint): a run made
    # with 1 thread on a CPU is the same run as one made on a GPU with a larger evaluation batch
    settings = {**settings, "train": {k: v for k, v in settings["train"].items() if k not in RUNTIME_KEYS}}
    versions = {"prepare": stage_version("prepare"), version_key("train", backbone): stage_version("train", backbone)}
    if config["variant_catalog"][variant].get("runner", "p2rec") == "recbole":
        # RecBole's model trains it: only what RecBole reads of the settings, and the RecBole adapter's code
        from p2rec.bench.recbole_runs import run_settings

        settings = run_settings(settings)
        versions = {"prepare": stage_version("prepare"), "recbole": stage_version("recbole")}
    upstream = {}
    for stage in config["variant_catalog"][variant].get("lineage", []):
        if stage == "pretrain":
            pre = config["pretrain"]["backbone"]
            versions[f"pretrain:{pre}"] = stage_version("train", pre)
        else:
            versions[stage] = stage_version(stage)
        upstream[stage] = _stage_settings(upstream_config, stage, dataset, variant, hidden)
    data = data_identity(config["catalog"][dataset])
    payload = {"run": {"dataset": dataset, "backbone": backbone, "variant": variant, "seed": int(seed)},
               "data": data, "settings": settings, "pipeline": pipeline if upstream else None, "item_init": config["variant_catalog"][variant].get("item_init"),
               "upstream": upstream, "code_versions": versions}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    # the dataset's identity (its catalog entry less training overrides, with any declared checksum): runs
    # compared with each other must agree on it (p2rec.report.runs.Run.dataset_version)
    data_version = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"lineage": digest, "code_versions": versions, "data_version": data_version, **payload["run"]}


def run_restorable(published_dir: str | os.PathLike, lineage: str) -> bool:
    """A published run can stand in for a training job when all its files are there and its lineage matches."""
    folder = Path(published_dir)
    if not all((folder / name).is_file() for name in RUN_FILES):
        return False
    try:
        return read_json(folder / "provenance.json").get("lineage") == lineage
    except (OSError, ValueError, AttributeError):
        return False


def restore_run(published_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Copy a published run into the working folder, each file through a temporary name (never half-written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        tmp = out / f".{name}.restoring"
        shutil.copyfile(Path(published_dir) / name, tmp)
        os.replace(tmp, out / name)


def run_job(out_dir, seed: int, provenance: dict | None, restore_from, record_failure: bool,
            train) -> dict:
    """One run of the workflow (``p2rec train``, ``p2rec bench recbole-run``): restored from its published copy
    when that has the same lineage, else ``train()``; a failure is recorded as a failed run when asked (the
    tables then show "failed"); provenance.json is written beside the run's files."""
    candidates = [restore_from] if isinstance(restore_from, str) else list(restore_from or [])
    for source in candidates:  # the first published copy with this lineage
        if provenance and run_restorable(source, provenance["lineage"]):
            restore_run(source, out_dir)
            print(json.dumps({"status": "restored", "from": source, "lineage": provenance["lineage"]}))
            return {"status": "restored"}
    try:
        metrics = train()
    except Exception as err:
        if not record_failure:
            raise
        import traceback

        from p2rec.report.runs import write_failed_run

        traceback.print_exc()
        reason = f"{type(err).__name__}: {err}"
        write_failed_run(out_dir, seed, reason)
        write_provenance(out_dir, provenance)
        print(json.dumps({"status": "failed", "reason": reason}))
        return {"status": "failed", "reason": reason}
    write_provenance(out_dir, provenance)
    print(json.dumps({"test": metrics["test"], "best_epoch": metrics["best_epoch"]}))
    return metrics


def write_provenance(out_dir, provenance: dict | None) -> None:
    """provenance.json beside a run's files: its lineage, and when it was computed (not restored)."""
    if provenance is not None:
        stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        write_json(Path(out_dir) / "provenance.json", {**provenance, "computed": stamp})


# ------------------------------------------------------------------------------------------------ publish
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _devices(work: Path, files: list[str]) -> list[str]:
    found = set()
    for rel in files:
        if rel.endswith("timing.json"):
            try:
                device = read_json(work / rel).get("device")
            except (OSError, ValueError, AttributeError):
                continue
            if device:
                found.add(str(device))
    return sorted(found)


def published_experiment(folder: Path) -> str | None:
    """The experiment a published folder holds, from its MANIFEST (or, where that is gone, its config.json)."""
    for name, key in ((MANIFEST, lambda d: d.get("experiment")),
                      ("config.json", lambda d: (d.get("experiment") or {}).get("name"))):
        if (folder / name).is_file():
            try:
                return key(read_json(folder / name))
            except (OSError, ValueError, AttributeError):
                return None
    return None


def kept_runs(target: Path, files: list[str]) -> list[str]:
    """Files of published run folders that this publish does not bring (relative to the published folder)."""
    runs = target / "runs"
    if not runs.is_dir():
        return []
    new_runs = {str(Path(rel).parent) for rel in files if rel.startswith("runs/")}
    return sorted(str(p.relative_to(target)) for p in runs.rglob("*")
                  if p.is_file() and str(p.parent.relative_to(target)) not in new_runs)


def publish(config: dict, files: list[str], manifest_path: str | os.PathLike, index_path: str | os.PathLike) -> dict:
    """Copy the experiment's compact files (paths relative to its working folder) into its published folder,
    replacing what an earlier publish of the same experiment left there, then write its MANIFEST and the index.

    The new folder is assembled beside the old one and swapped in with renames, so a failure leaves the old
    folder as it was. A folder whose MANIFEST names another experiment is never touched."""
    name = experiment_name(config)
    work, target = Path(work_root(config)), Path(manifest_path).parent
    previous = published_experiment(target)
    if previous is not None and previous != name:
        raise P2RecError(f"{target / MANIFEST}: this folder holds experiment '{previous}', not '{name}'; "
                         f"publish '{name}' elsewhere (config key 'experiment.name' or 'results_dir')")
    if previous is None and target.exists() and any(target.iterdir()):
        raise P2RecError(f"{target}: folder exists with files but no {MANIFEST}; it is not a published experiment "
                         f"(move it away, or choose another 'experiment.name' / 'results_dir')")
    # a record restored from the published folder (experiment.restore_published) is kept from there, one
    # restored from another experiment's (experiment.restore_from) is copied from that
    def source(rel: str) -> Path:
        for path in (work / rel, target / rel):
            if path.is_file():
                return path
        return Path(published_record(config, rel) or target / rel)

    sources = {rel: source(rel) for rel in files}
    missing = [rel for rel, src in sources.items() if not src.is_file()]
    if missing:
        raise P2RecError(f"publish '{name}': {len(missing)} file(s) missing under {work}, e.g. {missing[0]}")
    staging = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    # runs published earlier by a wider or another slice of the grid stay (with their own provenance), so
    # an experiment can be computed slice by slice; everything else is replaced by this publish
    kept = kept_runs(target, files)
    for rel in kept:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / rel, staging / rel)
    for rel, src in sources.items():
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    config_text = json.dumps(config, sort_keys=True, default=str)
    manifest = {
        "experiment": name,
        "description": config["experiment"].get("description", ""),
        "command": canonical_command(config),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", "src", "rules", "Snakefile")),
        "code_versions": {**{s: stage_version(s) for s in STAGE_ENTRIES if s != "train"},
                          **{f"train:{b}": stage_version("train", b) for b in
                             sorted(set(config["backbones"]) | {config["pretrain"]["backbone"]})}},
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "datasets": list(config["datasets"]),
        "devices": _devices(work, files),
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "system": platform.system()},
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "files": len(files),
        "runs_kept_from_earlier_publishes": len({str(Path(rel).parent) for rel in kept}),
    }
    write_json(staging / MANIFEST, manifest)
    write_json(staging / "config.json", config)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    write_index(target.parent, index_path)
    return manifest


# ------------------------------------------------------------------------------------------------ status
def run_status(provenance_path: Path) -> list[str]:
    """Stale stages of one published run ([] = current); a run without provenance is stale as a whole."""
    if not provenance_path.is_file():
        return ["(no provenance: made before code versions were derived from the code)"]
    return stale_stages(read_json(provenance_path).get("code_versions") or {})


def experiment_status(folder: Path) -> dict:
    runs = sorted({p.parent for p in folder.rglob("metrics.json") if "seed" in p.parent.name})
    stale = {}
    for run in runs:
        stages = run_status(run / "provenance.json")
        if stages:
            stale[str(run.relative_to(folder))] = stages
    manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).is_file() else None
    # a folder of another kind (benchmark tables: each file names its own command and commit) says what it
    # holds in the first line of its README.md
    readme = folder / "README.md"
    note = readme.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if (
        manifest is None and not runs and readme.is_file()) else None
    return {"experiment": folder.name, "runs": len(runs), "current": len(runs) - len(stale), "stale": stale,
            "manifest": manifest, "note": note}


def results_status(results_dir: str | os.PathLike) -> list[dict]:
    root = Path(results_dir)
    if not root.is_dir():
        raise P2RecError(f"{root}: no such results folder")
    return [experiment_status(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def write_index(results_dir: str | os.PathLike, index_path: str | os.PathLike) -> None:
    """results/INDEX.md: each folder, what it holds, the command that makes it, how many of its runs are current."""
    lines = ["# Published results", "",
             "Made by the workflow's publish rule; `python -m p2rec status` says which runs are current. A folder",
             "without a MANIFEST predates the experiment configs: its runs count as stale.", "",
             "| folder | what it holds | runs (current / all) | made by | commit | date |", "|---|---|---|---|---|---|"]
    for entry in results_status(results_dir):
        m = entry["manifest"] or {}
        what = m.get("description") or entry.get("note") or "archive (no MANIFEST; see docs/history.md)"
        command = f"`{m['command']}`" if m.get("command") else "-"
        lines.append(f"| [{entry['experiment']}/]({entry['experiment']}/) | {what} | {entry['current']} / "
                     f"{entry['runs']} | {command} | {str(m.get('git_commit', '-'))[:10]} | {m.get('date', '-')} |")
    write_text(index_path, "\n".join(lines) + "\n")
