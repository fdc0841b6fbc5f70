"""Side by side with RecBole: SASRec, GRU4Rec and Caser trained by RecBole 1.2.1 and by p2rec on the same split.

1. Creates RecBole's own virtual environment (``--venv``, default .bench/recbole-venv) with its own pins
   (recbole 1.2.1 needs numpy<2, pandas<3 and setuptools<81); the suite's environment is never touched.
2. Converts the prepared p2rec split (``--data``, default results/data/beauty/sequences.txt) into RecBole
   atomic files: one interaction per item, with a running timestamp, so RecBole's leave-one-out
   (order TO, group by user) sees exactly p2rec's train/valid/test items; the worker checks this user by
   user and the command fails on any mismatch.
3. Trains each model with both libraries under matched settings: hidden 64, max length 50, full-softmax
   cross-entropy, batch 256, Adam lr 1e-3, full ranking, early stopping on validation NDCG@10 with
   patience 10 (``--max-epochs`` caps the epochs). RecBole does not mask already-seen items in full
   ranking; p2rec runs unmasked too unless ``--mask-history``. ``--loss one-negative`` trains both with one
   uniformly sampled negative per target instead: RecBole's BPR (pairwise, its only one-negative loss for
   these models) against p2rec's ``bce`` (pointwise), the objective of the published BCE table.
   Caser runs in RecBole with its own window as the maximum length (RecBole's Caser convolves over the
   whole input list) and RecBole's user embedding, which p2rec's user-id-free Caser does not have.
4. Writes ``<out-dir>/recbole.csv`` (library, model, sec_per_epoch, eval_sec, epochs, hr@10, ndcg@10, ...)
   and ``<out-dir>/recbole.md`` with the ratios.

    python -m p2rec bench recbole --max-epochs 200            # the full Beauty comparison
    python -m p2rec bench recbole --data /tmp/synth/sequences.txt --max-epochs 1 --out-dir /tmp/rb

RecBole itself runs in ``recbole_worker.py`` beside this file, started as a file by RecBole's interpreter.
The conversion, the venv and the worker's start are shared with the workflow's RecBole runs (recbole_runs.py).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from p2rec import P2RecError
from p2rec.bench import recbole_runs as runs
from p2rec.bench.recbole_runs import (CASER_WINDOW, PINS, RECBOLE_MODELS, WORKER, check_split,  # noqa: F401
                                      ensure_venv, write_atomic_files)
from p2rec.workflow.config import train_settings, validate_config
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.evaluation import full_ranking, metrics_from_ranks
from p2rec.io import command_line, markdown_rows, write_table_files
from p2rec.models.registry import build_backbone
from p2rec.training.trainer import environment, eval_batching, resolve_device, seed_everything, train_backbone

COLUMNS = ["library", "model", "sec_per_epoch", "eval_sec", "epochs", "best_epoch", "hr@10", "ndcg@10",
           "training_samples", "test_eval_sec", "precision", "samples", "hr@10_masked", "ndcg@10_masked"]
LOSSES = {"ce": ("CE", "ce"), "one-negative": ("BPR", "bce")}  # --loss: (RecBole loss_type, p2rec train.loss)


def check_args(args) -> str | None:
    """Usage errors found before RecBole's long run, not after it."""
    if args.max_epochs < 1 or args.patience < 1:
        return "--max-epochs and --patience must be >= 1"
    if set(args.precisions) != {"fp32"} and args.loss != "ce":
        return "--precisions other than fp32 apply to --loss ce only"
    return None


# ------------------------------------------------------------------ RecBole

def recbole_config(args, work: Path, model: str) -> dict:
    return runs.recbole_config(model, work, hidden=args.hidden, max_len=args.max_len, loss_type=LOSSES[args.loss][0],
                               epochs=args.max_epochs, patience=args.patience, batch_size=args.batch_size,
                               eval_batch_size=args.eval_batch_size, lr=args.lr, weight_decay=0.0, seed=args.seed,
                               device=args.device)


def run_recbole(py: Path, args, work: Path, name: str, model: str, expected: Path) -> dict:
    job = {"model": RECBOLE_MODELS[model][0], "dataset": name, "config_dict": recbole_config(args, work, model),
           "expected": str(expected), "threads": args.threads}
    result = runs.start_worker([str(py), str(WORKER)], work / f"run-{model}", job)
    check_split(result, f"on {args.data}")
    return result


# ------------------------------------------------------------------ p2rec

def run_p2rec(args, model: str, precision: str = "fp32", samples: str = "sequences") -> dict:
    config = validate_config({
        "catalog": {"bench": {"source": "sequences", "file": str(args.data)}}, "datasets": ["bench"],
        "backbones": [model], "variant_catalog": {"none": {"item_init": None}}, "variants": ["none"],
        "backbone_params": {model: dict(args.model_override)},
        "train": {"max_len": args.max_len, "hidden": args.hidden, "batch_size": args.batch_size, "lr": args.lr,
                  "epochs": args.max_epochs, "patience": args.patience, "loss": LOSSES[args.loss][1],
                  "eval_batch_size": args.eval_batch_size, "device": args.device, "threads": args.threads,
                  "precision": precision, **({"samples": samples} if samples != "sequences" else {})},
        "eval": {"ks": [10], "mask_history": bool(args.mask_history), "select_metric": "ndcg@10"},
    })
    settings = train_settings(config, "bench", model)
    data = read_sequences(args.data)
    split = leave_one_out(data)
    seed_everything(args.seed)
    backbone = build_backbone(model, data.num_items, args.hidden, args.max_len, **settings["model"])
    print(f"p2rec {model} ({precision}, {samples}): training", file=sys.stderr, flush=True)
    res = train_backbone(backbone, split, settings, args.seed, progress=False)
    # the same selected model tested again with seen items masked (the suite's protocol), as RecBole's is
    backbone.eval()
    device = resolve_device(args.device)
    with torch.no_grad():
        masked = metrics_from_ranks(full_ranking(backbone.score_last, split.inputs("test"), split.targets("test"),
                                                 args.max_len, mask_history=True, batch_size=args.eval_batch_size,
                                                 device=device, batching=eval_batching(device)), [10])
    return {"sec_per_epoch": res.timing["seconds_per_epoch"], "eval_sec": res.timing["eval_seconds_per_pass"],
            "test_eval_sec": res.timing["test_eval_seconds"], "epochs": res.epochs, "best_epoch": res.best_epoch,
            "test": res.test, "test_masked": masked, "training_samples": res.timing["training_sequences"],
            "settings": settings, "backbone": backbone, "split": split}


# ------------------------------------------------------------------ report

def _hr10(test: dict) -> float:
    return test.get("hr@10", test.get("hit@10", float("nan")))  # RecBole names it hit@10


def _row(library: str, model: str, r: dict, precision: str, samples: str) -> dict:
    """``samples``: how the library trained (RecBole always on prefixes)."""
    test, masked = r["test"], r.get("test_masked")
    return {"library": library, "model": model, "sec_per_epoch": round(r["sec_per_epoch"], 3),
            "eval_sec": round(r["eval_sec"], 3), "epochs": r["epochs"], "best_epoch": r["best_epoch"],
            "hr@10": round(_hr10(test), 4),
            "ndcg@10": round(test["ndcg@10"], 4), "training_samples": r["training_samples"],
            "test_eval_sec": round(r["test_eval_sec"], 3), "precision": precision, "samples": samples,
            "hr@10_masked": round(_hr10(masked), 4) if masked else "",
            "ndcg@10_masked": round(masked["ndcg@10"], 4) if masked else ""}


def _loss_text(loss: str) -> str:
    if loss == "ce":
        return "full-softmax cross-entropy"
    return "one uniformly sampled negative per target (RecBole: BPR, pairwise; p2rec: bce, pointwise)"


def _stored_lines(stored: dict[str, dict]) -> list[str]:
    """Where RecBole rows that were not trained by this command come from."""
    lines = []
    for model, r in sorted(stored.items()):
        resumed = r.get("resumed")
        lines.append(f"RecBole {model}: not trained by this command; its row is `{r['source']}`"
                     + (f" (a run resumed after epoch {resumed['epochs_done']}; sec_per_epoch and eval_sec are the "
                        f"means over the {r.get('epochs_timed', '?')} epochs run after the resume)" if resumed else ""))
    return lines


def to_markdown(rows: list[dict], args, env: dict, recbole_env: dict, p2rec_settings: dict) -> str:
    by = {(r["library"], r["model"], r["precision"], r["samples"]): r for r in rows}
    lines = [
        f"# p2rec vs RecBole 1.2.1 on `{args.data}`",
        "",
        f"Same leave-one-out split (checked user by user), hidden {args.hidden}, max length {args.max_len}, "
        f"{_loss_text(args.loss)}, "
        + (f"Caser in RecBole with max length {CASER_WINDOW} (its window) and its user embedding, "
           if "caser" in args.models else "")
        + f"batch {args.batch_size}, Adam lr {args.lr}, full ranking of all items, "
        f"early stopping on validation NDCG@10 with patience {args.patience} (at most {args.max_epochs} epochs), "
        f"test once with the best weights, seed {args.seed}, one process after the other on the same machine. "
        f"Seen items are {'masked in p2rec only' if args.mask_history else 'not masked (RecBole never masks them)'}. "
        + (f"precision: the dtype of p2rec's cross-entropy matrix products (train.precision; RecBole: fp32). "
           if args.precisions != ["fp32"] else "")
        + f"sec_per_epoch = mean training seconds per epoch; eval_sec = mean seconds per validation pass; epochs = "
        f"epochs run (best_epoch = the one selected). samples: how a row trained (training_samples of them per "
        f"epoch): sequences = every position of a user's sequence in one causal pass (p2rec's default), "
        f"prefixes = one sample per (prefix -> next item) pair, loss at its end (RecBole; p2rec's train.samples: "
        f"prefixes). hr@10_masked, ndcg@10_masked: the same "
        f"selected model tested with each user's seen items masked, as the suite's protocol does (both libraries).",
        "",
        *markdown_rows(rows, COLUMNS),
    ]
    lines += ["", "Ratios (RecBole / p2rec; NDCG@10 as p2rec - RecBole; to the selected epoch = sec_per_epoch x "
              "best_epoch, the training time the selected model cost):", "",
              "| model | p2rec precision | p2rec samples | epoch speed-up | speed-up to the selected epoch | "
              "evaluation speed-up | NDCG@10 difference |",
              "|---|---|---|---|---|---|---|"]
    for model in args.models:
        for precision in args.precisions:
            for samples in args.samples:
                p, r = by.get(("p2rec", model, precision, samples)), by.get(("recbole", model, "fp32", "prefixes"))
                if p and r:
                    to_best = (r["sec_per_epoch"] * r["best_epoch"]) / max(p["sec_per_epoch"] * p["best_epoch"], 1e-9)
                    lines.append(f"| {model} | {precision} | {samples} | "
                                 f"{r['sec_per_epoch'] / max(p['sec_per_epoch'], 1e-9):.1f}x | {to_best:.1f}x | "
                                 f"{r['eval_sec'] / max(p['eval_sec'], 1e-9):.1f}x | {p['ndcg@10'] - r['ndcg@10']:+.4f} |")
    recbole_settings = (f"{RECBOLE_MODELS[m][0]} {json.dumps(RECBOLE_MODELS[m][1], sort_keys=True)}" for m in args.models)
    lines += ["", "RecBole model settings (others at RecBole's defaults): " + "; ".join(recbole_settings),
              ("p2rec model settings (module defaults, overridden by --model-override): " if args.model_override
               else "p2rec model settings (module defaults): ") +
              "; ".join(f"{m} {json.dumps(s, sort_keys=True)}" for m, s in p2rec_settings.items()),
              *_stored_lines(getattr(args, "stored_recbole", {})),
              "", f"Command: `{args.command}`",
              "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()),
              "RecBole environment: " + ", ".join(f"{k} {v}" for k, v in recbole_env.items()), ""]
    return "\n".join(lines)


def load_recbole_results(paths: list[str]) -> dict[str, dict]:
    """Model name (ours) -> a stored RecBole result, checked like a fresh one (split identical user by user)."""
    by_recbole_name = {name: model for model, (name, _) in RECBOLE_MODELS.items()}
    stored = {}
    for path in paths:
        try:
            result = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise P2RecError(f"--recbole-results: {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise P2RecError(f"--recbole-results: {path} is not JSON ({err})") from None
        if not isinstance(result, dict) or result.get("model") not in by_recbole_name:
            name = result.get("model") if isinstance(result, dict) else None
            raise P2RecError(f"--recbole-results: {path}: model {name!r} is none of {sorted(by_recbole_name)}")
        missing = [key for key in ("sec_per_epoch", "eval_sec", "test_eval_sec", "epochs", "best_epoch", "test",
                                   "training_samples", "split_check") if key not in result]
        if missing:
            raise P2RecError(f"--recbole-results: {path} has no {missing[0]!r} (not a recbole_worker.py result)")
        model = by_recbole_name[result["model"]]
        check_split(result, f"in --recbole-results {path}")
        if model in stored:
            raise P2RecError(f"--recbole-results: two files for {result['model']} ({path})")
        stored[model] = {**result, "source": str(path)}
    return stored


def write_outputs(rows: list[dict], args, recbole_env: dict, p2rec_settings: dict) -> str:
    md = to_markdown(rows, args, environment(resolve_device(args.device)), recbole_env, p2rec_settings)
    write_table_files(Path(args.out_dir) / "recbole", rows, COLUMNS, md)
    return md


def run(args) -> list[dict]:
    args.command = command_line(args.argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir).resolve()  # the worker runs inside its run folder: relative paths would break
    name = Path(args.data).parent.name or "dataset"
    name = "".join(c if c.isalnum() else "_" for c in name)
    started = time.perf_counter()
    stored = load_recbole_results(args.recbole_results)  # read first: a bad file fails before any training
    args.stored_recbole = {m: r for m, r in stored.items() if m in args.models and not args.p2rec_only}
    if not args.p2rec_only and set(args.models) - set(stored):
        py = ensure_venv(Path(args.venv), args.python)
        _, expected = write_atomic_files(args.data, work, name)
    rows, recbole_env, p2rec_settings = [], {}, {}
    for model in args.models:
        # ours first (minutes), RecBole after (hours for SASRec); the outputs are rewritten after every run,
        # so a comparison stopped part-way keeps what it has finished
        for precision in args.precisions:
            for samples in args.samples:
                ours = run_p2rec(args, model, precision, samples)
                p2rec_settings[model] = ours["settings"]["model"]
                rows.append(_row("p2rec", model, ours, precision, samples))
                md = write_outputs(rows, args, recbole_env, p2rec_settings)
        if args.p2rec_only:
            continue
        rb = stored.get(model) or run_recbole(py, args, work, name, model, expected)
        recbole_env = {"torch": rb["torch"], "torch_threads": rb["torch_threads"]}
        rows.append(_row("recbole", model, rb, "fp32", "prefixes"))
        print(f"{model}: RecBole {rb['sec_per_epoch']:.2f}s/epoch; p2rec " +
              ", ".join(f"{r['sec_per_epoch']:.2f}s/epoch ({r['precision']}, {r['samples']})" for r in rows
                        if r["library"] == "p2rec" and r["model"] == model), file=sys.stderr, flush=True)
        md = write_outputs(rows, args, recbole_env, p2rec_settings)
    print(md)
    print(f"done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return rows
