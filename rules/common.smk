# Helpers shared by the rules: config validation, the experiment's folders, wildcard constraints, targets.
import json
import re
from pathlib import Path

from p2rec.workflow import targets as T
from p2rec.workflow.config import train_settings, validate_config
from p2rec.workflow.names import check_names
from p2rec.workflow.experiment import (check_experiment, export_package_path, pipeline_config, published_root, restore_roots,
                                       work_root)
from p2rec.workflow.versions import stage_version
from p2rec.workflow.gpu import gpu_resource, lease_shell as gpu_job  # gpu_job("cmd"): cmd runs on its GPU slot(s) or device(s)

check_names(config)  # dataset/backbone/variant names become folder names: no '..', no separators
config.update(validate_config(config))
# jobs in a conda environment (--software-deployment-method conda) import the package from this checkout
export_package_path(workflow.basedir)
check_experiment(config, workflow.basedir)

# working files of this experiment (ignored by git) and its published folder (committed)
WORK = work_root(config)
PUBLISHED = published_root(config)
CPU_ENV = "../envs/cpu.yaml"


def W(path):
    """A path inside the experiment's working folder."""
    return f"{WORK}/{path}"


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


def variants_run_by(runner):
    """The variant wildcard of the job that trains ``runner``'s runs (p2rec: train_backbone, recbole:
    recbole_run), from the catalog, so that each run folder has exactly one producer. No such variant: a
    pattern that matches nothing."""
    names = [n for n, e in config["variant_catalog"].items() if e.get("runner", "p2rec") == runner]
    return _alternatives(names) if names else "(?!)"


def final_targets():
    return [W("published.json")]


def data_entry(dataset):
    """The catalog entry less its training overrides and its item text (rules/items.smk): what shapes the
    sequence data. The same as a run's lineage takes (p2rec.workflow.experiment.data_identity)."""
    from p2rec.workflow.experiment import data_identity

    return data_identity(config["catalog"][dataset])


def settings_json(wildcards):
    """Only the settings of this run: editing anything else never retrains it."""
    return json.dumps(train_settings(config, wildcards.dataset, wildcards.backbone), sort_keys=True)


def _run_key(w):
    return w.dataset, w.backbone, w.variant, int(w.seed)


def run_provenance(wildcards):
    """The run's lineage: settings, code versions and upstream stages (its hash is the rerun trigger)."""
    return json.dumps(T.lineage(config, *_run_key(wildcards)), sort_keys=True)


def restore_flag(wildcards):
    # the same text whether or not the published copy exists yet (the command checks its lineage), so that
    # publishing never changes this param and reruns the job
    rel = T.run_dir(*_run_key(wildcards))
    return " ".join(f"--restore-from {root}/{rel}" for root in restore_roots(config))


def item_init_input(wildcards):
    # a run restored from its published copy needs nothing upstream
    path = T.item_init_file(config, wildcards.dataset, wildcards.backbone, wildcards.variant, wildcards.seed)
    return [path] if path and not T.restorable(config, *_run_key(wildcards)) else []


def item_init_flag(wildcards, input):
    return f"--item-init {input.item_init}" if input.item_init else ""


def work_runs(name, datasets=None):
    """A run file (metrics.json, ranks.csv.gz, ...) of every configured run, in the working folder."""
    return [W(f) for f in T.run_files(config, name, datasets)]


def recbole_settings_json(wildcards):
    """What RecBole reads of the run's settings (not p2rec's backbone parameters): the rerun trigger."""
    from p2rec.bench.recbole_runs import run_settings

    return json.dumps(run_settings(train_settings(config, wildcards.dataset, wildcards.backbone)), sort_keys=True)
