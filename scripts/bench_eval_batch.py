#!/usr/bin/env python
"""Full-ranking time of every backbone at several evaluation batch sizes, side by side in one run.

The test pass (all users, all items, history masked) of each backbone is timed at each ``--batch-sizes``
value; repeats are interleaved (every backbone and batch size once, then again), and the medians are
reported with the ratio to the first batch size. The ranks must not depend on the batch size: the script
stops if any user's rank differs. Untrained models (the timing does not depend on the weights).

    python scripts/bench_eval_batch.py --data results/data/ml-1m/sequences.txt --max-len 200 \
        --batch-sizes 2048 256 --repeat 5 --threads 2 --out results/reproduction/bench_ml-1m_eval_batch

writes ``<out>.csv`` and ``<out>.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p2rec import P2RecError
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.io import command_line, markdown_rows, write_text
from p2rec.models.registry import BACKBONES, build_backbone
from p2rec.training.trainer import environment, resolve_device, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbones import time_evaluation  # noqa: E402  (the same timed pass as the backbone benchmark)

COLUMNS = ["backbone", "eval_batch_size", "test_eval_sec", "users_per_sec", "speedup", "users", "max_len", "repeats"]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared sequences.txt")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2048, 256], help="the first is the reference")
    p.add_argument("--backbones", nargs="+", default=sorted(BACKBONES))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv and <out>.md")
    args = p.parse_args(argv)
    if args.repeat < 1 or min(args.batch_sizes) < 1:
        p.error("--repeat and every --batch-sizes value must be >= 1")
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
        f"Command: `{command_line('bench_eval_batch.py', argv)}`",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""])
    write_text(out.with_suffix(".md"), md)
    print(md)
    return rows


if __name__ == "__main__":
    try:
        main()
    except P2RecError as err:  # ranks that depend on the batch size, or unreadable data
        sys.exit(f"error: {err}")
