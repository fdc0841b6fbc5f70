"""Speed of every registered backbone on one prepared dataset, measured side by side in one run.

For each backbone (module defaults, cross-entropy, the trainer's batching): seconds per training epoch,
seconds per full validation pass (all users, full ranking, history masked) and full-ranking throughput
in users per second on the test inputs (all users). Repeats are interleaved across backbones (repeat 1 of
every backbone, then repeat 2, ...), so load changes on a shared machine hit all backbones alike; the
reported figures are medians over repeats.

    python -m p2rec bench backbones --data results/data/beauty/sequences.txt --max-len 50 \
        --epochs-to-time 1 --repeat 3 --out results/bench/beauty

``--precisions fp32 bf16`` times each backbone's training with both dtypes of the cross-entropy's matrix
products (``train.precision``), interleaved like the repeats, and reports the bf16 speed-up per backbone.

writes ``<out>.csv`` and ``<out>.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from p2rec import P2RecError
from p2rec.bench.commands import invalid_choice
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.evaluation import full_ranking
from p2rec.io import markdown_rows, write_table_files
from p2rec.models.losses import PRECISIONS
from p2rec.models.base import SequentialBackbone
from p2rec.models.registry import BACKBONES, build_backbone
from p2rec.training.trainer import (environment, make_batches, make_optimizer, resolve_device, seed_everything, train_epoch,
                            training_pairs)

COLUMNS = ["backbone", "parameters", "sec_per_epoch", "valid_eval_sec", "test_eval_sec", "users_per_sec",
           "users", "training_sequences", "max_len", "repeats"]


def check_args(args: argparse.Namespace) -> str | None:
    """A usage error, if any; ``--backbones`` left out means every registered one."""
    if args.backbones is None:
        args.backbones = sorted(BACKBONES)
    unknown = [b for b in args.backbones if b not in BACKBONES]
    if unknown:
        return f"unknown backbone(s) {unknown}; registered: {sorted(BACKBONES)}"
    if args.repeat < 1 or args.epochs_to_time < 0 or args.max_len < 1:
        return "--repeat and --max-len must be >= 1, --epochs-to-time >= 0 (0: evaluation only)"
    return invalid_choice("--precisions", args.precisions, PRECISIONS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(model, optimizer, pairs, batch_size: int, epochs: int, device, rng, precision: str = "fp32") -> float:
    """Seconds per epoch of the trainer's loop (bucketed shuffled batches, CE, Adam)."""
    model.train()
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        train_epoch(model, optimizer, pairs, make_batches(pairs, batch_size, rng), "ce", 0, device, precision=precision)
    _sync(device)
    return (time.perf_counter() - start) / epochs


def time_evaluation(model, inputs, targets, max_len: int, batch_size: int, device, generic: bool = False):
    """Seconds of one full-ranking pass, and its ranks. ``generic``: the reference path (the full forward's
    last position, padded batches) instead of the backbone's ``score_last`` over equal-length batches."""
    model.eval()
    score = (lambda seqs: SequentialBackbone.score_last(model, seqs)) if generic else model.score_last
    _sync(device)
    start = time.perf_counter()
    ranks = full_ranking(score, inputs, targets, max_len, mask_history=True, batch_size=batch_size, device=device,
                         batching="padded" if generic else "equal_length")
    _sync(device)
    return time.perf_counter() - start, ranks


def measure(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = read_sequences(args.data)
    split = leave_one_out(data)
    pairs = training_pairs(split.train, args.max_len)
    if not pairs:
        raise P2RecError(f"{args.data}: no user has two or more training items")
    setups = {}  # (backbone, precision) -> its own model, optimiser and batch order, all from the same seed
    for name in args.backbones:
        for precision in args.precisions:
            seed_everything(args.seed)
            model = build_backbone(name, data.num_items, args.hidden, args.max_len).to(device)
            setups[name, precision] = (model, make_optimizer(model, args.lr, 0.0, device),
                                       np.random.default_rng(args.seed))
    times = {key: {"train": [], "valid": [], "test": [], "generic": [], "rank_agreement": []} for key in setups}
    for rep in range(args.repeat):
        for (name, precision), (model, optimizer, rng) in setups.items():
            t = times[name, precision]
            if args.epochs_to_time:
                t["train"].append(time_training(model, optimizer, pairs, args.batch_size, args.epochs_to_time, device,
                                                rng, precision))
            with torch.no_grad():
                t["valid"].append(time_evaluation(model, split.inputs("valid"), split.targets("valid"), args.max_len,
                                                  args.eval_batch_size, device)[0])
                seconds, ranks = time_evaluation(model, split.inputs("test"), split.targets("test"), args.max_len,
                                                 args.eval_batch_size, device)
                t["test"].append(seconds)
                if args.compare_generic:
                    seconds, reference = time_evaluation(model, split.inputs("test"), split.targets("test"),
                                                         args.max_len, args.eval_batch_size, device, generic=True)
                    t["generic"].append(seconds)
                    t["rank_agreement"].append(float(np.mean(ranks == reference)))
            epoch = f"epoch {t['train'][-1]:.2f}s, " if t["train"] else ""
            label = f"{name} {precision}" if len(args.precisions) > 1 else name
            print(f"repeat {rep + 1}/{args.repeat} {label}: {epoch}valid pass "
                  f"{t['valid'][-1]:.3f}s, test pass {t['test'][-1]:.3f}s"
                  + (f", generic test pass {t['generic'][-1]:.3f}s" if args.compare_generic else ""),
                  file=sys.stderr, flush=True)
    rows = []
    users = len(split.users)
    for (name, precision), (model, _, _) in setups.items():
        t = {k: statistics.median(v) for k, v in times[name, precision].items() if v}
        rows.append({
            "backbone": name,
            "precision": precision,
            "parameters": sum(p.numel() for p in model.parameters()),
            "sec_per_epoch": round(t["train"], 4) if "train" in t else "",  # empty: --epochs-to-time 0
            "valid_eval_sec": round(t["valid"], 4),
            "test_eval_sec": round(t["test"], 4),
            "users_per_sec": round(users / t["test"], 1),
            "users": users,
            "training_sequences": len(pairs),
            "max_len": args.max_len,
            "repeats": args.repeat,
        })
        if args.compare_generic:
            rows[-1].update(generic_test_eval_sec=round(t["generic"], 4), eval_speedup=round(t["generic"] / t["test"], 2),
                            rank_agreement=min(times[name, precision]["rank_agreement"]))
    return rows


def columns(args: argparse.Namespace) -> list[str]:
    return (COLUMNS + (["precision"] if len(args.precisions) > 1 else [])
            + (["generic_test_eval_sec", "eval_speedup", "rank_agreement"] if args.compare_generic else []))


def precision_speedups(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """Markdown lines: each backbone's fp32 seconds per epoch over those of every other precision."""
    if len(args.precisions) < 2 or not args.epochs_to_time or "fp32" not in args.precisions:
        return []
    by = {(r["backbone"], r["precision"]): r["sec_per_epoch"] for r in rows}
    others = [p for p in args.precisions if p != "fp32"]
    lines = ["", "Training speed-up over fp32 (fp32 seconds per epoch / these):", "",
             "| backbone | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for name in args.backbones:
        lines.append(f"| {name} | " + " | ".join(f"{by[name, 'fp32'] / max(by[name, p], 1e-9):.2f}x" for p in others)
                     + " |")
    return lines


def to_markdown(rows: list[dict], args: argparse.Namespace, env: dict) -> str:
    lines = [
        f"# Backbone speed on `{args.data}`",
        "",
        f"Medians over {args.repeat} interleaved repeat(s); "
        + (f"training: cross-entropy over all items (matrix products in {' and '.join(args.precisions)}), batch "
           f"{args.batch_size}, hidden {args.hidden}, max length "
           f"{args.max_len}, {args.epochs_to_time} epoch(s) timed per repeat; " if args.epochs_to_time else
           f"training not timed (untrained models, hidden {args.hidden}, max length {args.max_len}); ")
        + f"evaluation: full ranking of all items for every user, history masked, eval batch "
        f"{args.eval_batch_size}. Throughput = users / test-pass seconds.",
        "",
        *markdown_rows(rows, columns(args)),
    ]
    lines += precision_speedups(rows, args)
    if args.compare_generic:
        lines += ["", "generic_test_eval_sec: the reference path (full forward's last position, inputs sorted by "
                  "length in padded batches); eval_speedup = generic / test_eval_sec; rank_agreement: share of "
                  "users whose test rank is identical on both paths (minimum over repeats)."]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    rows = measure(args)
    env = environment(resolve_device(args.device))
    md = to_markdown(rows, args, env)
    write_table_files(args.out, rows, columns(args), md)
    print(md)
    return rows
