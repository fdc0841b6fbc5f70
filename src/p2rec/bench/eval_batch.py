"""Full-ranking time of every backbone at several evaluation batch sizes, side by side in one run.

The test pass (all users, all items, history masked) of each backbone is timed at each ``--batch-sizes``
value; repeats are interleaved (every backbone and batch size once, then again), and the medians are
reported with the ratio to the first batch size. The ranks must not depend on the batch size: the command
stops if any user's rank differs. Untrained models (the timing does not depend on the weights).

    python -m p2rec bench eval-batch --data results/data/ml-1m/sequences.txt --max-len 200 \
        --batch-sizes 2048 256 --repeat 5 --threads 2 --out results/reproduction/bench_ml-1m_eval_batch

writes ``<out>.csv`` and ``<out>.md`` and prints the table.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p2rec import P2RecError
from p2rec.bench.backbones import time_evaluation  # the same timed pass as the backbone benchmark
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.io import command_line, markdown_rows, write_text
from p2rec.models.registry import BACKBONES, build_backbone
from p2rec.training.trainer import environment, resolve_device, seed_everything

COLUMNS = ["backbone", "eval_batch_size", "test_eval_sec", "users_per_sec", "speedup", "users", "max_len", "repeats"]


def check_args(args) -> str | None:
    """A usage error, if any; ``--backbones`` left out means every registered one."""
    if args.backbones is None:
        args.backbones = sorted(BACKBONES)
    if args.repeat < 1 or min(args.batch_sizes) < 1:
        return "--repeat and every --batch-sizes value must be >= 1"
    return None


def run(args) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = read_sequences(args.data)
    split = leave_one_out(data)
    inputs, targets = split.inputs("test"), split.targets("test")
    models = {}
    for name in args.backbones:
        seed_everything(1)
        models[name] = build_backbone(name, data.num_items, args.hidden, args.max_len).to(device).eval()
    times = {(name, bs): [] for name in models for bs in args.batch_sizes}
    for rep in range(args.repeat):
        for name, model in models.items():
            reference = None
            for bs in args.batch_sizes:
                with torch.no_grad():
                    seconds, ranks = time_evaluation(model, inputs, targets, args.max_len, bs, device)
                times[(name, bs)].append(seconds)
                if reference is None:
                    reference = ranks
                elif not np.array_equal(ranks, reference):
                    raise P2RecError(f"{name}: ranks at batch size {bs} differ from batch size {args.batch_sizes[0]} "
                                     f"for {int((ranks != reference).sum())} users")
            print(f"repeat {rep + 1}/{args.repeat} {name}: " + ", ".join(
                f"batch {bs} {times[(name, bs)][-1]:.3f}s" for bs in args.batch_sizes), file=sys.stderr, flush=True)
    rows = []
    for name in models:
        base = statistics.median(times[(name, args.batch_sizes[0])])
        for bs in args.batch_sizes:
            sec = statistics.median(times[(name, bs)])
            rows.append({"backbone": name, "eval_batch_size": bs, "test_eval_sec": round(sec, 4),
                         "users_per_sec": round(len(inputs) / sec, 1), "speedup": round(base / sec, 2),
                         "users": len(inputs), "max_len": args.max_len, "repeats": args.repeat})
    out = Path(args.out)
    write_text(out.with_suffix(".csv"), pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
    env = environment(device)
    md = "\n".join([
        f"# Full-ranking time by evaluation batch size on `{args.data}`", "",
        f"Test pass of all {len(inputs)} users over all items, history masked, max length {args.max_len}, hidden "
        f"{args.hidden}, untrained models; medians over {args.repeat} interleaved repeats; speedup = time at batch "
        f"{args.batch_sizes[0]} / time at this batch size; ranks identical at every batch size (checked).", "",
        *markdown_rows(rows, COLUMNS), "",
        f"Command: `{command_line(args.argv)}`",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""])
    write_text(out.with_suffix(".md"), md)
    print(md)
    return rows
