"""Where a training epoch's time goes on the CPU: encoder forward, cross-entropy forward, backward (encoder and
cross-entropy together), optimiser step, and the cross-entropy forward + backward alone on the same hidden
states. Times ``--batches`` batches of a real epoch (same batching as the trainer) and scales them to the
whole epoch.

    python -m p2rec bench profile-epoch --data results/data/beauty/sequences.txt --backbone sasrec --samples prefixes
"""
from __future__ import annotations

import time

import numpy as np
import torch

from p2rec import P2RecError
from p2rec.bench.commands import invalid_choice
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.models.losses import PRECISIONS, chunked_softmax_ce
from p2rec.models.registry import build_backbone
from p2rec.training.trainer import (batch_hidden, environment, make_batches, make_optimizer, training_pairs,
                            training_prefixes)


def profile(args) -> dict:
    torch.set_num_threads(args.threads)
    data = read_sequences(args.data)
    split = leave_one_out(data)
    torch.manual_seed(args.seed)
    model = build_backbone(args.backbone, data.num_items, args.hidden, args.max_len)
    model.train()
    cpu = torch.device("cpu")
    optimizer = make_optimizer(model, 1e-3, 0.0, cpu)
    prefixes = args.samples == "prefixes"
    pairs = (training_prefixes if prefixes else training_pairs)(split.train, args.max_len)
    if not pairs:
        raise P2RecError(f"{args.data}: no user has two or more training items")
    batches = make_batches(pairs, args.batch_size, np.random.default_rng(args.seed))
    parts = dict.fromkeys(["encoder_forward", "ce_forward", "backward", "optimizer", "ce_alone"], 0.0)
    timed = batches[:args.batches]
    for idx in timed:
        t0 = time.perf_counter()
        hidden, y = batch_hidden(model, [pairs[i] for i in idx], cpu, last_only=prefixes)
        t1 = time.perf_counter()
        loss = chunked_softmax_ce(hidden, model.item_table(), y, precision=args.precision)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        h, table = hidden.detach().requires_grad_(), model.item_table().detach().requires_grad_()
        t5 = time.perf_counter()
        chunked_softmax_ce(h, table, y, precision=args.precision).backward()
        t6 = time.perf_counter()
        for key, sec in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5)):
            parts[key] += sec
    scale = len(batches) / len(timed)
    row = {"backbone": args.backbone, "samples": args.samples, "precision": args.precision,
           "samples_per_epoch": len(pairs), "batches_per_epoch": len(batches),
           **{f"{k}_s": round(v * scale, 2) for k, v in parts.items()}}
    row["epoch_s"] = round(sum(v for k, v in parts.items() if k != "ce_alone") * scale, 2)
    return row


def check_args(args) -> str | None:
    return invalid_choice("--precision", [args.precision], PRECISIONS)


def run(args) -> dict:
    if args.batches < 1:
        raise P2RecError("--batches must be at least 1")
    row = profile(args)
    print(" ".join(f"{k}={v}" for k, v in row.items()))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in environment().items()))
    return row
