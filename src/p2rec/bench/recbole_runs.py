"""RecBole runs in the suite's run format: one backbone trained by RecBole 1.2.1, written as a p2rec run folder.

The workflow's ``recbole_run`` rule (rules/recbole.smk) trains the runs of a variant whose catalog entry says
``runner: recbole`` with ``python -m p2rec bench recbole-run``:

1. the prepared split becomes RecBole atomic files (one running timestamp, so RecBole's leave-one-out keeps
   p2rec's train/valid/test items; the worker checks this user by user and the run fails on any mismatch);
2. ``recbole_worker.py`` trains and tests the model with RecBole's interpreter (RecBole's own environment:
   the rule's conda env ``envs/recbole.yaml``, or the side venv ``p2rec bench recbole`` creates) and returns,
   beside RecBole's own figures, every user's 0-based pessimistic validation and test rank, seen items masked
   as ``eval.mask_history`` says;
3. :func:`write_run` turns that result into metrics.json, ranks.csv.gz, timing.json, config.json,
   history.csv and provenance.json, the files of ``p2rec train``, so tables, statistics and publish take a
   RecBole run like any other. Its metrics are computed from its ranks, as every p2rec run's are.

``p2rec bench recbole`` (recbole_compare.py) shares the conversion, the venv and the worker.
"""
from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.evaluation import metrics_from_ranks
from p2rec.io import ensure_dir, write_json, write_ranks, write_text

REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).resolve().with_name("recbole_worker.py")
# RecBole's side environment; envs/recbole.yaml pins the same (tests/test_envs.py checks)
PINS = ["recbole==1.2.1", "torch==2.13.0", "numpy<2", "pandas<3", "setuptools<81"]
# RecBole model name and its model-specific settings; unspecified ones keep RecBole's defaults
RECBOLE_MODELS = {
    "sasrec": ("SASRec", {"n_layers": 2, "n_heads": 1, "inner_size": 256, "hidden_dropout_prob": 0.5,
                          "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12}),
    "gru4rec": ("GRU4Rec", {"num_layers": 1, "dropout_prob": 0.3}),
    # nv, nh and dropout as p2rec's Caser; reg_weight stays RecBole's 1e-4
    "caser": ("Caser", {"nv": 4, "nh": 16, "dropout_prob": 0.5}),
}
CASER_WINDOW = 5  # p2rec's Caser window (module default); RecBole's Caser window is its MAX_ITEM_LIST_LENGTH
# p2rec's train.loss -> RecBole's loss_type: its sequential models train with the full softmax or BPR only
LOSS_TYPES = {"ce": "CE", "bpr": "BPR"}
#: the train keys a RecBole run reads (the rest, e.g. samples or precision, are p2rec's trainer's own)
TRAIN_KEYS = ("max_len", "hidden", "batch_size", "lr", "weight_decay", "epochs", "patience", "loss",
              "eval_batch_size", "device", "threads")
#: the eval keys a RecBole run reads; its run records the whole section, as p2rec's runs do (captions compare them)
EVAL_KEYS = ("ks", "mask_history", "mode", "select_metric")
#: a stand-in for RecBole's interpreter and worker (a Python file run by this interpreter), for tests only
STUB_ENV = "P2REC_RECBOLE_WORKER"


# ------------------------------------------------------------------ configuration

def runner(config: dict, variant: str) -> str:
    return (config["variant_catalog"].get(variant) or {}).get("runner", "p2rec")


def run_settings(settings: dict) -> dict:
    """What a RecBole run reads of a run's resolved settings (``train_settings``): p2rec's backbone parameters
    and its trainer's own keys are left out, so editing them never reruns a RecBole run."""
    return {"backbone": settings["backbone"], "runner": "recbole",
            "train": {k: settings["train"][k] for k in TRAIN_KEYS if k in settings["train"]},
            "eval": dict(settings["eval"])}


def _metric_name(metric: str) -> str | None:
    """p2rec's hr@K / ndcg@K as RecBole names it (Hit@K / NDCG@K); None for anything RecBole cannot select on."""
    match = re.fullmatch(r"(hr|ndcg)@(\d+)", metric)
    if not match:
        return None
    return {"hr": "Hit", "ndcg": "NDCG"}[match.group(1)] + "@" + match.group(2)


def check_config(config: dict) -> None:
    """Parse-time checks of the variants RecBole trains (``variant_catalog.<name>.runner: recbole``): every
    backbone of the grid needs a RecBole model, and the settings a RecBole run cannot follow are refused,
    each error naming its key, instead of failing hours later (or silently training something else)."""
    problems = []
    for name, entry in config["variant_catalog"].items():
        if (entry or {}).get("runner", "p2rec") != "recbole":
            continue
        for key in ("item_init", "lineage"):
            if entry.get(key):
                problems.append(f"config key 'variant_catalog.{name}.{key}': a RecBole variant (runner: recbole) "
                                f"starts from RecBole's own initialisation; it takes no item table")
    used = [v for v in config["variants"] if runner(config, v) == "recbole"]
    if used:
        variant = used[0]
        for i, backbone in enumerate(config["backbones"]):
            if backbone not in RECBOLE_MODELS:
                problems.append(f"config key 'backbones[{i}]': backbone '{backbone}' has no RecBole model, and "
                                f"variant '{variant}' (variant_catalog.{variant}.runner: recbole) trains every "
                                f"backbone of the grid with RecBole (RecBole backbones: "
                                f"{', '.join(sorted(RECBOLE_MODELS))})")
        for dataset in config["datasets"]:
            override = config["catalog"].get(dataset, {}).get("train", {})
            train = {**config["train"], **override}

            def key(name: str) -> str:
                return f"catalog.{dataset}.train.{name}" if name in override else f"train.{name}"

            if train["loss"] not in LOSS_TYPES:
                problems.append(f"config key '{key('loss')}': '{train['loss']}' is no loss of RecBole's sequential "
                                f"models, which variant '{variant}' trains with RecBole (RecBole: "
                                f"{', '.join(LOSS_TYPES)})")
            if train.get("precision", "fp32") != "fp32":
                problems.append(f"config key '{key('precision')}': RecBole trains in fp32 only (variant '{variant}')")
            if train.get("targets", 1) != 1:
                problems.append(f"config key '{key('targets')}': RecBole trains one target per position "
                                f"(variant '{variant}')")
        if config["eval"]["mode"] != "full":
            problems.append(f"config key 'eval.mode': RecBole runs (variant '{variant}') rank all items (full)")
        if _metric_name(config["eval"]["select_metric"]) is None:
            problems.append(f"config key 'eval.select_metric': RecBole runs (variant '{variant}') select on hr@K "
                            f"or ndcg@K, not '{config['eval']['select_metric']}'")
    if problems:
        raise P2RecError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(problems)))


def check_run_settings(settings) -> dict:
    """The settings ``bench recbole-run`` receives (JSON from :func:`run_settings`), checked as the config is."""
    if not isinstance(settings, dict) or not isinstance(settings.get("train"), dict) \
            or not isinstance(settings.get("eval"), dict):
        raise P2RecError("--settings: expected a JSON object with 'backbone', 'train' and 'eval' (run_settings)")
    missing = [f"train.{k}" for k in TRAIN_KEYS if k not in settings["train"]]
    missing += [f"eval.{k}" for k in EVAL_KEYS if k not in settings["eval"]]
    if missing:
        raise P2RecError(f"--settings: missing {', '.join(missing)}")
    config = {"variant_catalog": {"recbole": {"runner": "recbole"}}, "variants": ["recbole"],
              "backbones": [settings.get("backbone")], "datasets": ["run"], "catalog": {"run": {}},
              "train": settings["train"], "eval": settings["eval"]}
    check_config(config)
    return settings


def recbole_config(model: str, work: Path, *, hidden: int, max_len: int, loss_type: str, epochs: int,
                   patience: int, batch_size: int, eval_batch_size: int, lr: float, weight_decay: float, seed: int,
                   device: str, ks=(10,), select: str = "ndcg@10", checkpoint_dir: Path | None = None) -> dict:
    """RecBole's config_dict for one model on the atomic files under ``<work>/data``."""
    _, specific = RECBOLE_MODELS[model]
    sizes = {"sasrec": {"hidden_size": hidden},
             "gru4rec": {"embedding_size": hidden, "hidden_size": hidden},
             "caser": {"embedding_size": hidden}}[model]
    negatives = {"distribution": "uniform", "sample_num": 1} if loss_type == "BPR" else None
    select_k = int(select.split("@")[1])
    return {
        "data_path": str(work / "data"),
        "checkpoint_dir": str(checkpoint_dir or work / "saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": CASER_WINDOW if model == "caser" else max_len,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "loss_type": loss_type, "train_neg_sample_args": negatives,
        # RecBole stops after stopping_step + 1 epochs without improvement, p2rec after `patience`
        "epochs": epochs, "stopping_step": patience - 1, "eval_step": 1,
        "train_batch_size": batch_size, "eval_batch_size": eval_batch_size,
        "learning_rate": lr, "weight_decay": weight_decay,
        "metrics": ["Hit", "NDCG"], "topk": sorted(set(ks) | {select_k}), "valid_metric": _metric_name(select),
        "seed": seed, "reproducibility": True,
        # RecBole picks its device from gpu_id and writes it into CUDA_VISIBLE_DEVICES (of its own process):
        # empty = CPU; on a GPU keep the device a scheduler assigned instead of forcing GPU 0
        "gpu_id": visible_gpu() if device.startswith("cuda") else "", "show_progress": False,
        "save_dataset": False, "save_dataloaders": False, "log_wandb": False, "worker": 0,
        **sizes, **specific,
    }


def visible_gpu() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


# ------------------------------------------------------------------ RecBole's environment and its worker

def ensure_venv(venv: Path, python: str | None = None) -> Path:
    """Create (once) the venv with RecBole's pins; a stamp file records what was installed."""
    py = venv / "bin" / "python"
    stamp = venv / ".p2rec-bench-pins"
    want = "\n".join(PINS) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == want:
        return py
    check = "import numpy, pandas, torch, recbole; print(recbole.__version__, torch.__version__, numpy.__version__)"
    try:
        if not py.exists():
            print(f"creating {venv}", file=sys.stderr, flush=True)
            subprocess.run([python or sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"installing {' '.join(PINS)} into {venv}", file=sys.stderr, flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
        out = subprocess.run([str(py), "-c", check], check=True, capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError as err:  # one line, as every other failure of the command
        raise P2RecError(str(err)) from None
    print(f"RecBole venv ready: recbole/torch/numpy {out}", file=sys.stderr, flush=True)
    stamp.write_text(want, encoding="utf-8")
    return py


def worker_command(venv: Path, python: str | None = None) -> list[str]:
    """How the worker starts: a test's stand-in (``$P2REC_RECBOLE_WORKER``); this interpreter where RecBole is
    installed in it (the rule's conda env); else the side venv, created on first use."""
    stub = os.environ.get(STUB_ENV)
    if stub:
        return [sys.executable, stub]
    if importlib.util.find_spec("recbole") is not None:
        return [sys.executable, str(WORKER)]
    return [str(ensure_venv(venv, python)), str(WORKER)]


def start_worker(command: list[str], run_dir: Path, job: dict) -> dict:
    """Write ``job.json`` into ``run_dir``, run the worker there, and return its result (a failure: one
    P2RecError with the tail of its log)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "job.json", job)
    # RecBole's interpreter must not see p2rec's packages (PYTHONPATH) nor the suite's venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # RecBole reloads its best checkpoint with pickle
    log = run_dir / "worker.log"
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    print(f"RecBole {job['model']}: training (log: {log})", file=sys.stderr, flush=True)
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([*command, "--config", str(run_dir / "job.json"), "--out", str(result_path)],
                              cwd=run_dir, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not result_path.exists():
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-25:])
        raise P2RecError(f"RecBole {job['model']} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def check_split(result: dict, where: str) -> None:
    """Stop unless the worker found RecBole's validation and test rows identical to p2rec's, user by user."""
    for stage, check in result["split_check"].items():
        if check["missing_users"] or check["target_mismatch"] or check["input_mismatch"]:
            raise P2RecError(f"RecBole's {stage} split differs from p2rec's {where}: {check}")


# ------------------------------------------------------------------ data conversion

def write_atomic_files(data_path: str | Path, work: Path, name: str) -> tuple[Path, Path]:
    """``<work>/data/<name>/<name>.inter`` and the expected split (JSON, original ids) for the worker's check.

    Timestamps are one running counter over the whole file, so every user's order is kept whatever
    sort RecBole applies, and its leave-one-out picks the same last two items as p2rec's."""
    data = read_sequences(data_path)
    split = leave_one_out(data)
    folder = work / "data" / name
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    clock = 0
    for user, seq in zip(data.users, data.sequences):
        for item in seq:
            lines.append(f"{user}\t{item}\t{clock}")
            clock += 1
    inter = folder / f"{name}.inter"
    write_text(inter, "\n".join(lines) + "\n")
    valid_in, test_in = split.inputs("valid"), split.inputs("test")
    expected = {
        str(u): {"valid_target": int(vt), "test_target": int(tt),
                 "valid_input": [int(i) for i in vi], "test_input": [int(i) for i in ti]}
        for u, vt, tt, vi, ti in zip(split.users, split.valid_target, split.test_target, valid_in, test_in)
    }
    expected_path = work / f"{name}.expected.json"
    write_json(expected_path, expected)
    return inter, expected_path


# ------------------------------------------------------------------ the run format

def _ranks(result: dict, stage: str) -> tuple[np.ndarray, np.ndarray]:
    table = result["ranks"].get(stage)
    if not isinstance(table, dict) or not table:
        raise P2RecError(f"RecBole result: no {stage} ranks")
    try:
        users = np.array([int(u) for u in table], dtype=np.int64)
    except ValueError:
        raise P2RecError(f"RecBole result: {stage} ranks of a user that is no integer id") from None
    ranks = np.array([int(r) for r in table.values()], dtype=np.int64)
    if (ranks < 0).any():
        raise P2RecError(f"RecBole result: negative {stage} ranks (0-based ranks expected)")
    return users, ranks


def _history_csv(history: list[dict], epochs: int) -> str:
    """RecBole's epochs as p2rec's history.csv: its validation figures are its own (ties its way, never masked)."""
    rows = []
    for entry in history:
        row = {"epoch": entry["epoch"], "train_loss": entry.get("train_loss"),
               "train_seconds": entry.get("train_seconds"), "eval_seconds": entry.get("eval_seconds")}
        for name, value in sorted((entry.get("valid") or {}).items()):
            metric, _, k = name.partition("@")
            ours = {"hit": "hr", "ndcg": "ndcg"}.get(metric)
            if ours and k:
                row[f"valid_{ours}@{k}"] = value
        rows.append(row)
    if len(rows) != epochs:
        raise P2RecError(f"RecBole result: {len(rows)} epochs in its history, {epochs} timed")
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


REQUIRED = ("model", "epochs", "best_epoch", "sec_per_epoch", "eval_sec", "test_eval_sec", "test", "ranks",
            "history", "training_samples")


def write_run(result: dict, out_dir: str | Path, *, settings: dict, seed: int, data: str | Path,
              recbole: dict | None = None, users=None, provenance: dict | None = None,
              total_seconds: float | None = None) -> dict:
    """One RecBole run's result (``recbole_worker.py``'s JSON) as the suite's run folder.

    ``settings``: the run's settings (:func:`run_settings`); ``recbole``: the config_dict RecBole ran with;
    ``users``: the split's users, which the ranks must cover exactly; ``provenance``: the lineage the rule
    passes (written as ``p2rec train --provenance`` writes it). Returns metrics.json's content."""
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise P2RecError(f"RecBole result: no {missing[0]!r} (not a result of recbole_worker.py with job 'ranks')")
    ks = settings["eval"]["ks"]
    if bool(result["ranks"].get("mask_history")) != bool(settings["eval"]["mask_history"]):
        raise P2RecError(f"RecBole result: ranks with mask_history {result['ranks'].get('mask_history')}, "
                         f"the run's eval.mask_history is {settings['eval']['mask_history']}")
    test_users, test_ranks = _ranks(result, "test")
    valid_users, valid_ranks = _ranks(result, "valid")
    if users is not None:
        want = set(int(u) for u in users)
        for stage, got in (("test", test_users), ("valid", valid_users)):
            if set(got.tolist()) != want:
                lost, extra = sorted(want - set(got.tolist())), sorted(set(got.tolist()) - want)
                raise P2RecError(f"RecBole result: {stage} ranks of {len(got)} users, the split has {len(want)} "
                                 f"(missing e.g. {lost[:3]}, unknown e.g. {extra[:3]})")
    out = ensure_dir(out_dir)
    history = _history_csv(result["history"], int(result.get("epochs_timed", result["epochs"])))
    write_ranks(out / "ranks.csv.gz", test_users, test_ranks)
    write_text(out / "history.csv", history)
    timing = {
        "implementation": "recbole",
        "epochs": int(result["epochs"]),
        "best_epoch": int(result["best_epoch"]),
        "train_seconds": float(result["sec_per_epoch"]) * int(result.get("epochs_timed", result["epochs"])),
        "seconds_per_epoch": float(result["sec_per_epoch"]),
        "eval_seconds_per_pass": float(result["eval_sec"]),
        "test_eval_seconds": float(result["test_eval_sec"]),
        "training_sequences": int(result["training_samples"]),  # RecBole: one sample per (prefix -> item)
        "device": str(result.get("device", "cpu")),
        **{k: result[k] for k in ("gpu", "fit_seconds", "torch", "torch_threads", "recbole", "epochs_timed",
                                  "resumed") if result.get(k) is not None},
    }
    if total_seconds is not None:
        timing["total_seconds"] = float(total_seconds)
    write_json(out / "timing.json", timing)
    name, specific = RECBOLE_MODELS[settings["backbone"]]
    write_json(out / "config.json", {
        "seed": int(seed), "data": str(data), "item_init": None, "implementation": "recbole",
        "backbone": settings["backbone"], "train": settings["train"], "eval": settings["eval"],
        "model": {"recbole_model": name, **specific},
        "recbole": {k: v for k, v in (recbole or {}).items() if k not in ("data_path", "checkpoint_dir")},
    })
    if provenance is not None:
        stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        write_json(out / "provenance.json", {**provenance, "computed": stamp})
    metrics = {"valid": metrics_from_ranks(valid_ranks, ks), "test": metrics_from_ranks(test_ranks, ks),
               "best_epoch": int(result["best_epoch"]), "epochs": int(result["epochs"]),
               "users": int(len(test_users)), "seed": int(seed), "status": "ok",
               # RecBole's own test figures: ties broken its way, seen items never masked
               "recbole_test": {k: float(v) for k, v in result["test"].items()}}
    write_json(out / "metrics.json", metrics)  # last: a folder with metrics.json is complete
    return metrics


# ------------------------------------------------------------------ one run

def train_run(data: str | Path, settings: dict, seed: int, out_dir: str | Path, work_dir: str | Path | None = None,
              venv: str | Path | None = None, python: str | None = None, provenance: dict | None = None) -> dict:
    """Train one backbone with RecBole on the prepared ``data`` and write its run folder (``out_dir``).
    RecBole's files (atomic data, job, log, saved model) go to ``work_dir`` (default ``<out_dir>/recbole``)."""
    started = time.perf_counter()
    settings = check_run_settings(settings)
    train, ev, backbone = settings["train"], settings["eval"], settings["backbone"]
    split = leave_one_out(read_sequences(data))  # a missing or malformed file fails here, before RecBole
    work = Path(work_dir or Path(out_dir) / "recbole").resolve()  # the worker runs in its own folder
    name = "".join(c if c.isalnum() else "_" for c in (Path(data).parent.name or "dataset"))
    for stale in (work / "data", work / "run"):  # a killed attempt's files: never read as this run's
        shutil.rmtree(stale, ignore_errors=True)
    _, expected = write_atomic_files(data, work, name)
    device = train["device"]
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = recbole_config(backbone, work, hidden=train["hidden"], max_len=train["max_len"],
                            loss_type=LOSS_TYPES[train["loss"]], epochs=train["epochs"], patience=train["patience"],
                            batch_size=train["batch_size"], eval_batch_size=train["eval_batch_size"], lr=train["lr"],
                            weight_decay=train["weight_decay"], seed=seed, device=device, ks=ev["ks"],
                            select=ev["select_metric"], checkpoint_dir=work / "run" / "saved")
    job = {"model": RECBOLE_MODELS[backbone][0], "dataset": name, "config_dict": config, "expected": str(expected),
           "threads": train["threads"], "ranks": {"mask_history": bool(ev["mask_history"])}}
    command = worker_command(Path(venv) if venv else REPO / ".bench" / "recbole-venv", python)
    result = start_worker(command, work / "run", job)
    check_split(result, f"on {data}")
    metrics = write_run(result, out_dir, settings=settings, seed=seed, data=data, recbole=config, users=split.users,
                        provenance=provenance, total_seconds=time.perf_counter() - started)
    shutil.rmtree(work / "data", ignore_errors=True)  # a copy of the dataset; the log and saved model stay
    return metrics

