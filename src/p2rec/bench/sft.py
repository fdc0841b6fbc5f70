"""Side-by-side SFT throughput: user-level and instance-level steps alternated in one process on one device.

A quick check of the cost argument without the workflow: the same model, LoRA, prompt and optimiser;
one untimed warm-up step per mode, then ``rounds`` rounds, each ``steps`` user-level steps then
``steps`` instance-level steps on batches drawn as the stages draw them (similar lengths together,
padded to the longest prompt); medians over rounds. The full-epoch costs are extrapolated from the
medians (labelled so), and their ratio is set beside the theoretical token ratio (instance-level prompt
tokens / user-level prompt tokens of one epoch) and the sample ratio.

Throughput does not depend on what the embeddings contain, so without a stage-0 table and categories a
seeded random table and random categories are used (reported as such).

    python -m p2rec bench sft --data results/data/beauty/sequences.txt --model packaged --rounds 3 --steps 5 \
        --out results/llm/bench/beauty.json
    python -m p2rec bench sft-table --inputs results/llm/bench/*.json --out results/llm/bench/ratios
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p2rec import P2RecError
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.io import read_json, write_json, write_text
from p2rec.llm.categories import load_categories, load_item_table, prior_preferences
from p2rec.llm.loading import PACKAGED, convert_packaged, library_versions, peak_memory_mb
from p2rec.llm.settings import _deep_merge, _schema_defaults
from p2rec.llm.sft import (_sync, build_model, instance_samples, instance_target, make_batches, train_step,
                           trainable_parameters, user_samples)
from p2rec.workflow.config import load_schema


def bench_sft(data_path: str | Path, model_path: str, settings: dict, rounds: int = 3, steps: int = 5,
              item_table_path: str | Path | None = None, categories_path: str | Path | None = None,
              seed: int = 0, progress: bool = True) -> dict:
    if rounds < 1 or steps < 1:
        raise P2RecError("--rounds and --steps must be >= 1")
    data = read_sequences(data_path)
    train = leave_one_out(data).train
    k, max_items = int(settings["k"]), int(settings["max_items"])
    rng = np.random.default_rng(seed)
    if item_table_path:
        table = load_item_table(item_table_path, data.num_items, "stage-0 item table")
    else:
        table = rng.normal(0, 0.02, size=(data.num_items + 1, 64)).astype(np.float32)
        table[0] = 0
    if categories_path:
        cats = load_categories(categories_path, data.num_items)
    else:
        cats = np.concatenate([[-1], rng.integers(0, k, size=data.num_items)])
    g_u = torch.as_tensor(prior_preferences(train, cats, k, max_items))
    users, inst = user_samples(train, max_items), instance_samples(train, max_items)
    if len(inst) == 0:
        raise P2RecError(f"{data_path}: no instance-level samples")
    torch.manual_seed(seed)
    model, device = build_model(model_path, settings, table, k)
    template = model.template
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=settings["lr"], weight_decay=settings["weight_decay"])
    model.train()
    full = {"user": {"samples": len(users), "tokens": int(sum(template.length(users.items(train, j)) for j in range(len(users))))},
            "instance": {"samples": len(inst), "tokens": int(sum(template.length(inst.items(train, j)) for j in range(len(inst))))}}
    measured = {"user": [], "instance": []}
    bs = int(settings["batch_size"])
    # batches as the stages make them (similar lengths together), a fresh shuffle per round
    lengths = {mode: np.array([template.length(s.items(train, j)) for j in range(len(s))])
               for mode, s in (("user", users), ("instance", inst))}

    def draw(mode: str, r: int) -> list[np.ndarray]:
        batches = make_batches(lengths[mode], bs, np.random.default_rng([seed, r + 1, int(mode == "user")]))
        return [batches[i % len(batches)] for i in range(steps)]

    for mode, samples in (("user", users), ("instance", inst)):  # warm-up step per mode, not timed
        idx = draw(mode, -1)[0]
        target = g_u[samples.user[idx]] if mode == "user" else \
            torch.as_tensor(cats[[instance_target(train, samples, int(j)) for j in idx]])
        train_step(model, optimizer, template.batch([samples.items(train, int(j)) for j in idx]).to(device),
                   target.to(device), mode, settings.get("loss", "mse"))
    for r in range(rounds):
        for mode, samples in (("user", users), ("instance", inst)):
            seconds, tokens, n = 0.0, 0, 0
            for idx in draw(mode, r):
                batch = template.batch([samples.items(train, int(j)) for j in idx]).to(device)
                if mode == "user":
                    target = g_u[samples.user[idx]]
                else:
                    target = torch.as_tensor(cats[[instance_target(train, samples, int(j)) for j in idx]])
                t0 = time.perf_counter()
                train_step(model, optimizer, batch, target.to(device), mode, settings.get("loss", "mse"))
                _sync(device)
                seconds += time.perf_counter() - t0
                tokens += batch.tokens
                n += len(idx)
            measured[mode].append({"tokens_per_s": tokens / seconds, "s_per_sample": seconds / n,
                                   "s_per_token": seconds / tokens})
            if progress:
                print(f"round {r + 1}/{rounds} {mode:8s}: {tokens / seconds:7.1f} tokens/s, "
                      f"{1000 * seconds / n:7.1f} ms/sample", flush=True)
    out = {"device": str(device), "rounds": rounds, "steps": steps, "batch_size": bs, "max_items": max_items,
           "random_inputs": not (item_table_path and categories_path), "model_path": str(model_path),
           "prompt": template.describe(), "peak_memory_mb": peak_memory_mb(device), **library_versions(device)}
    for mode in ("user", "instance"):
        med = {key: statistics.median(m[key] for m in measured[mode]) for key in measured[mode][0]}
        out[mode] = {**full[mode], "median_tokens_per_s": med["tokens_per_s"], "median_s_per_sample": med["s_per_sample"],
                     "rounds": measured[mode],
                     # full-epoch cost from the median time per token (the tokens of an epoch are exact)
                     "full_epoch_s_extrapolated": full[mode]["tokens"] * med["s_per_token"]}
    out["measured_cost_ratio_extrapolated"] = out["instance"]["full_epoch_s_extrapolated"] / out["user"]["full_epoch_s_extrapolated"]
    out["theoretical_token_ratio"] = full["instance"]["tokens"] / full["user"]["tokens"]
    out["sample_ratio"] = full["instance"]["samples"] / full["user"]["samples"]
    out["ratio_deviation"] = out["measured_cost_ratio_extrapolated"] / out["theoretical_token_ratio"] - 1
    return out


def bench_table(results: dict[str, dict]) -> list[dict]:
    """One row per dataset from ``bench_sft`` results ({dataset: result}); both epoch times are
    extrapolated from the measured medians, so every row says so."""
    rows = []
    for dataset, r in results.items():
        try:
            user, inst = r["user"], r["instance"]
            rows.append({
                "dataset": dataset, "user_samples": user["samples"], "instance_samples": inst["samples"],
                "user_tokens": user["tokens"], "instance_tokens": inst["tokens"],
                "theoretical_token_ratio": round(r["theoretical_token_ratio"], 2),
                "sample_ratio": round(r["sample_ratio"], 2),
                "user_tokens_per_s": round(user["median_tokens_per_s"], 1),
                "instance_tokens_per_s": round(inst["median_tokens_per_s"], 1),
                "user_epoch_s": round(user["full_epoch_s_extrapolated"]),
                "instance_epoch_s": round(inst["full_epoch_s_extrapolated"]),
                "measured_cost_ratio": round(r["measured_cost_ratio_extrapolated"], 2),
                "deviation": f"{r['ratio_deviation']:+.1%}", "extrapolated": True,
                "device": r["device"], "torch_threads": r.get("torch_threads", ""),
            })
        except KeyError as err:
            raise P2RecError(f"'bench sft' result for {dataset!r} has no key {err}: not written by 'p2rec bench sft'?")
    return rows


def run(args) -> dict:
    """``bench sft``: the settings are the schema's llm defaults under ``--settings``."""
    settings = _deep_merge(_schema_defaults(load_schema()["properties"]["llm"]), args.settings)
    settings.pop("dataset_overrides", None)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = str(convert_packaged(args.converted_dir)) if args.model == PACKAGED else args.model
    settings["model"] = args.model
    result = bench_sft(args.data, model, settings, rounds=args.rounds, steps=args.steps,
                       item_table_path=args.item_table, categories_path=args.categories)
    if args.out:
        write_json(args.out, result)
    keys = ("measured_cost_ratio_extrapolated", "theoretical_token_ratio", "sample_ratio", "ratio_deviation")
    print(json.dumps({"user_tokens_per_s": result["user"]["median_tokens_per_s"],
                      "instance_tokens_per_s": result["instance"]["median_tokens_per_s"],
                      **{k: result[k] for k in keys}}))
    return result


def run_table(args) -> list[dict]:
    """``bench sft-table``: one row per ``bench sft`` result, named after its file (``<dataset>.json``)."""
    rows = bench_table({Path(f).stem: read_json(f) for f in args.inputs})
    frame = pd.DataFrame(rows)  # columns in the rows' order
    write_text(f"{args.out}.csv", frame.to_csv(index=False))
    caption = ("Instance-level vs user-level SFT cost per dataset, from `p2rec bench sft` (user-level and "
               "instance-level steps alternated in one process on one device; medians over rounds). Both epoch "
               "times are **extrapolated** from the measured medians and the exact token counts of one epoch; "
               "measured_cost_ratio = instance_epoch_s / user_epoch_s, deviation = measured / theoretical token "
               "ratio - 1.")
    write_text(f"{args.out}.md", caption + "\n\n" + frame.to_markdown(index=False) + "\n")
    print(f"{len(rows)} rows -> {args.out}.csv, {args.out}.md")
    return rows
