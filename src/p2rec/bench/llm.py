"""The LLM stages' paths side by side in one process: before (float32, every prompt whole, adapters apart) and
after (shared instruction prefix, merged adapters in extraction, bfloat16 where the CPU has it).

Throughput (``run``): every configuration is built once from the same seeded weights; each round runs the same
SFT batches (drawn as the stage draws them) and the same extraction items through every configuration in
turn, so the machine's load hits them alike; medians over rounds. Reported per configuration: prompt tokens/s
(the stage's own measure, prefix counted in every prompt), decoder positions actually computed, padding, the
achieved FLOP/s and the model FLOP utilisation (MFU) against a GEMM microbenchmark of the same dtype run on
the same cores in the same process. Extraction states are compared with the before path on the same items.

FLOPs per computed position: 2 x the decoder's linear weights (adapters merged or not) plus the attention
products (4 x layers x width x attended positions); an SFT step counts twice that (the backward pass computes
input gradients only: the base weights are frozen and the adapters' weight gradients are negligible).

Fidelity (``--fidelity-steps``): SFT from the same initial weights on the same batch sequence before and
after; the loss curve of each, the final loss (mean of the last fifth of the steps) and, after training,
every item's parsed category from each (agreement and adjusted Rand index).

    python -m p2rec bench llm --data work/main/data/beauty/sequences.txt --model packaged --rounds 3 \\
        --sft-steps 4 --extract-items 512 --out results/bench/llm/beauty
"""
from __future__ import annotations

import copy
import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p2rec import P2RecError
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.io import write_json, write_text
from p2rec.llm.categories import prior_preferences
from p2rec.llm.loading import PACKAGED, convert_packaged, cpu_bf16_support, library_versions
from p2rec.llm.settings import _deep_merge, _schema_defaults
from p2rec.llm.sft import build_model, make_batches, train_step, trainable_parameters, user_samples
from p2rec.workflow.config import load_schema


@dataclass(frozen=True)
class PathConfig:
    name: str
    dtype: str
    shared_prefix: bool
    merged: bool  # extraction only: adapters merged into the weights
    batch_size: int | None = None  # extraction only

    @property
    def before(self) -> bool:
        return self.dtype == "float32" and not self.shared_prefix and not self.merged


def sft_configs(bf16: bool) -> list[PathConfig]:
    out = [PathConfig("float32, whole prompts (before)", "float32", False, False),
           PathConfig("float32, shared prefix", "float32", True, False)]
    if bf16:
        out += [PathConfig("bfloat16, whole prompts", "bfloat16", False, False),
                PathConfig("bfloat16, shared prefix (default)", "bfloat16", True, False)]
    return out


def extract_configs(bf16: bool, before_batch: int = 64, batch: int = 256) -> list[PathConfig]:
    out = [PathConfig("float32, whole prompts, adapters apart (before)", "float32", False, False, before_batch),
           PathConfig("float32, shared prefix, merged", "float32", True, True, batch)]
    if bf16:
        out += [PathConfig("bfloat16, whole prompts, adapters apart", "bfloat16", False, False, before_batch),
                PathConfig("bfloat16, shared prefix, merged (default)", "bfloat16", True, True, batch)]
    return out


# ----------------------------------------------------------------------------------------------- FLOPs
def linear_weights(model) -> int:
    """Weights of the decoder's linear maps (attention and MLP projections), without the embedding and the
    LoRA adapters (rank 8: under 3% of a projection's work, and none once merged)."""
    layers = model.decoder.layers
    return int(sum(m.weight.numel() for name, m in layers.named_modules()
                   if isinstance(m, torch.nn.Linear) and "lora_" not in name))


def forward_flops(model, batch, shared_prefix: bool) -> float:
    """Forward FLOPs of one batch: 2 x linear weights per computed position, plus the attention products."""
    cfg = model.llm.config
    weights = linear_weights(model)  # outside the timed region
    layers, width = cfg.num_hidden_layers, cfg.hidden_size
    flops = 0.0
    n_prefix = len(model.template.prefix)
    for length in batch.lengths:
        start = n_prefix if shared_prefix else 0
        positions = np.arange(start, length) + 1  # attended positions of each computed one (causal)
        flops += 2 * weights * len(positions) + 4 * layers * width * positions.sum()
    if shared_prefix:
        flops += 2 * weights * n_prefix + 4 * layers * width * (np.arange(n_prefix) + 1).sum()
    return float(flops)


def gemm_peak(dtype: torch.dtype, m: int = 1024, k: int = 576, n: int = 1536, seconds: float = 0.5) -> float:
    """FLOP/s of a plain matrix product of the LLM's own shapes (hidden x MLP width) on this process's threads."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- set-up
def _inputs(data_path, k: int, max_items: int, seed: int):
    data = read_sequences(data_path)
    train = leave_one_out(data).train
    rng = np.random.default_rng(seed)
    # throughput does not depend on what the embeddings hold: a seeded random table and categories
    table = rng.normal(0, 0.02, size=(data.num_items + 1, 64)).astype(np.float32)
    table[0] = 0
    cats = np.concatenate([[-1], rng.integers(0, k, size=data.num_items)])
    g_u = torch.as_tensor(prior_preferences(train, cats, k, max_items))
    return data, train, table, g_u


def _models(model_path: str, settings: dict, table, k: int, configs: list[PathConfig], seed: int) -> dict:
    """One model per configuration, all with the same trainable weights (the adapters given a seeded
    non-zero start so that they change the states, as after fine-tuning)."""
    models = {}
    reference = None
    for cfg in configs:
        torch.manual_seed(seed)
        s = dict(settings, dtype=cfg.dtype, shared_prefix=cfg.shared_prefix, device="cpu")
        model, _ = build_model(model_path, s, table, k)
        params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
        if reference is None:
            gen = torch.Generator().manual_seed(seed + 1)
            reference = {n: (p.detach().float() + 0.01 * torch.randn(p.shape, generator=gen)) for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(reference[n].to(p.dtype))
        models[cfg] = model
    return models


# ----------------------------------------------------------------------------------------------- throughput
def bench_llm(data_path, model_path: str, settings: dict, rounds: int = 3, sft_steps: int = 4,
              extract_items: int = 512, seed: int = 0, bf16: bool | None = None, progress: bool = True) -> dict:
    if rounds < 1 or sft_steps < 1 or extract_items < 1:
        raise P2RecError("--rounds, --sft-steps and --extract-items must be >= 1")
    bf16 = bool(cpu_bf16_support()) if bf16 is None else bf16
    k, max_items, bs = int(settings["k"]), int(settings["max_items"]), int(settings["batch_size"])
    data, train, table, g_u = _inputs(data_path, k, max_items, seed)
    users = user_samples(train, max_items)
    # the GEMM reference is measured beside every timed configuration in every round (the load of a
    # shared machine changes by the minute: one reference at the start gave an MFU above 1 under load)
    peaks = {"float32": [], "bfloat16": []}

    def say(text):
        if progress:
            print(text, flush=True)

    # ---- SFT: the same batches through every configuration, a fresh draw per round
    configs = sft_configs(bf16)
    models = _models(model_path, settings, table, k, configs, seed)
    template = models[configs[0]].template
    lengths = np.array([template.length(users.items(train, j)) for j in range(len(users))])
    optimizers = {c: torch.optim.AdamW(trainable_parameters(m), lr=settings["lr"]) for c, m in models.items()}
    sft_rounds = {c: [] for c in configs}
    padding = {"real": 0, "padded": 0, "computed_shared": 0}
    for r in range(-1, rounds):  # round -1 warms every configuration up, untimed
        batches = make_batches(lengths, bs, np.random.default_rng([seed, r + 2]))[:sft_steps]
        prompts = [template.batch([users.items(train, int(j)) for j in idx]) for idx in batches]
        targets = [g_u[users.user[idx]] for idx in batches]
        for cfg in configs:
            model = models[cfg]
            model.train()
            peak = gemm_peak(getattr(torch, cfg.dtype)) if r >= 0 else None
            seconds = flops = 0.0
            tokens = computed = 0
            for batch, target in zip(prompts, targets):
                t0 = time.perf_counter()
                train_step(model, optimizers[cfg], batch, target, "user", settings.get("loss", "mse"))
                seconds += time.perf_counter() - t0
                tokens += batch.tokens
                computed += model.computed_tokens(batch)
                flops += 2 * forward_flops(model, batch, cfg.shared_prefix)
                if r >= 0 and cfg == configs[0]:
                    padding["real"] += batch.tokens
                    padding["padded"] += batch.padded_tokens
                if r >= 0 and cfg.shared_prefix and cfg.dtype == "float32":
                    padding["computed_shared"] += model.computed_tokens(batch)
            if r >= 0:
                sft_rounds[cfg].append({"seconds": seconds, "tokens": tokens, "computed_tokens": computed,
                                        "flops": flops, "gemm_peak": peak})
                peaks[cfg.dtype].append(peak)
                say(f"SFT round {r + 1}/{rounds} {cfg.name:38s} {tokens / seconds:7.1f} prompt tokens/s")
    sft_rows = _rows(configs, sft_rounds, "sft")
    del models, optimizers
    gc.collect()

    # ---- extraction: the same items through every configuration
    configs = extract_configs(bf16, batch=int(settings.get("extract_batch_size", 256)))
    models = _models(model_path, settings, table, k, configs, seed)
    for cfg, model in models.items():
        model.eval()
        if cfg.merged:
            model.llm.merge_adapter()
    items = np.random.default_rng(seed).permutation(np.arange(1, data.num_items + 1))[:extract_items]
    ext_rounds = {c: [] for c in configs}
    states = {}
    for r in range(-1, rounds):
        for cfg in configs:
            model = models[cfg]
            peak = gemm_peak(getattr(torch, cfg.dtype)) if r >= 0 else None
            chosen = items if r >= 0 else items[:cfg.batch_size]
            seconds = flops = 0.0
            tokens = computed = 0
            out = []
            with torch.no_grad():
                for start in range(0, len(chosen), cfg.batch_size):
                    batch = model.template.batch([[int(i)] for i in chosen[start:start + cfg.batch_size]])
                    t0 = time.perf_counter()
                    h, logits = model(batch)
                    seconds += time.perf_counter() - t0
                    out.append((h, logits.argmax(-1)))
                    tokens += batch.tokens
                    computed += model.computed_tokens(batch)
                    flops += forward_flops(model, batch, cfg.shared_prefix)
            if r >= 0:
                ext_rounds[cfg].append({"seconds": seconds, "tokens": tokens, "computed_tokens": computed,
                                        "flops": flops, "items": len(chosen), "gemm_peak": peak})
                peaks[cfg.dtype].append(peak)
                states[cfg] = (torch.cat([h for h, _ in out]), torch.cat([p for _, p in out]))
                say(f"extract round {r + 1}/{rounds} {cfg.name:48s} {len(chosen) / seconds:7.1f} items/s")
    ext_rows = _rows(configs, ext_rounds, "extract")
    ref_h, ref_p = states[configs[0]]
    for row, cfg in zip(ext_rows, configs):
        h, p = states[cfg]
        row["items_per_s"] = statistics.median(x["items"] / x["seconds"] for x in ext_rounds[cfg])
        row["max_abs_diff_vs_before"] = float((h - ref_h).abs().max())
        row["max_rel_diff_vs_before"] = float((h - ref_h).abs().max() / ref_h.abs().max())
        row["parsed_agreement_vs_before"] = float((p == ref_p).float().mean())
    for rows in (sft_rows, ext_rows):
        before = rows[0]["prompt_tokens_per_s"]
        for row in rows:
            row["speedup_vs_before"] = row["prompt_tokens_per_s"] / before
    return {
        "data": str(data_path), "users": len(train), "items": data.num_items, "rounds": rounds,
        "sft_steps": sft_steps, "batch_size": bs, "extract_items": int(len(items)),
        "prompt": template.describe(), "gemm_peak_flops_median": {k: statistics.median(v) for k, v in peaks.items() if v}, "cpu_bf16_flags": cpu_bf16_support(),
        "sft_padding": {"real_tokens": padding["real"], "padded_tokens": padding["padded"],
                        "padding_fraction": 1 - padding["real"] / max(padding["padded"], 1),
                        "computed_tokens_shared_prefix": padding["computed_shared"]},
        "sft": sft_rows, "extract": ext_rows, **library_versions(torch.device("cpu")),
    }


def _rows(configs, rounds: dict, stage: str) -> list[dict]:
    """Medians over rounds; the MFU of a round is its achieved FLOP/s over the GEMM reference measured
    just before it."""
    rows = []
    for cfg in configs:
        med = lambda key: statistics.median(x[key] / x["seconds"] for x in rounds[cfg])  # noqa: E731
        achieved = med("flops")
        peak = statistics.median(x["gemm_peak"] for x in rounds[cfg])
        mfu = statistics.median(x["flops"] / x["seconds"] / x["gemm_peak"] for x in rounds[cfg])
        rows.append({"stage": stage, "path": cfg.name, "dtype": cfg.dtype, "shared_prefix": cfg.shared_prefix,
                     "merged_adapters": cfg.merged, "batch_size": cfg.batch_size,
                     "prompt_tokens_per_s": med("tokens"), "computed_tokens_per_s": med("computed_tokens"),
                     "achieved_gflop_per_s": achieved / 1e9, "gemm_peak_gflop_per_s": peak / 1e9,
                     "mfu": mfu, "rounds": rounds[cfg]})
    return rows


# ----------------------------------------------------------------------------------------------- fidelity
def fidelity(data_path, model_path: str, settings: dict, steps: int | None = None, seed: int = 0,
             max_items: int = 2000, progress: bool = True) -> dict:
    """SFT before (float32, whole prompts) and after (the default path) from the same start on the same
    batches; loss curves, final losses and the parsed categories of every item from each."""
    from sklearn.metrics import adjusted_rand_score

    if not cpu_bf16_support():
        raise P2RecError("bench llm --fidelity-steps compares float32 with bfloat16, which this CPU lacks")
    k, window, bs = int(settings["k"]), int(settings["max_items"]), int(settings["batch_size"])
    data, train, table, g_u = _inputs(data_path, k, window, seed)
    users = user_samples(train, window)
    configs = [sft_configs(True)[0], sft_configs(True)[-1]]
    models = _models(model_path, dict(settings, lora=dict(settings["lora"], dropout=0.0)), table, k, configs, seed)
    template = models[configs[0]].template
    lengths = np.array([template.length(users.items(train, j)) for j in range(len(users))])
    batches = make_batches(lengths, bs, np.random.default_rng([seed, 0]))
    batches = batches[:steps] if steps else batches
    curves = {}
    for cfg in configs:
        model = models[cfg]
        model.train()
        opt = torch.optim.AdamW(trainable_parameters(model), lr=settings["lr"])
        t0 = time.perf_counter()
        curves[cfg.name] = [train_step(model, opt, template.batch([users.items(train, int(j)) for j in idx]),
                                       g_u[users.user[idx]], "user", settings.get("loss", "mse")) for idx in batches]
        if progress:
            print(f"fidelity {cfg.name}: {len(batches)} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    parsed = {}
    # the parsed categories of a seeded sample of items (all of them on a small dataset)
    items = np.sort(np.random.default_rng(seed).permutation(np.arange(1, data.num_items + 1))[:max_items])
    for cfg in configs:
        model = models[cfg]
        model.eval()
        model.llm.merge_adapter()
        out = []
        with torch.no_grad():
            for start in range(0, len(items), 256):
                batch = model.template.batch([[int(i)] for i in items[start:start + 256]])
                out.append(model(batch)[1].argmax(-1))
        parsed[cfg.name] = torch.cat(out).numpy()
    tail = max(1, len(batches) // 5)
    final = {name: float(np.mean(c[-tail:])) for name, c in curves.items()}
    before, after = configs[0].name, configs[1].name
    return {"data": str(data_path), "steps": len(batches), "parsed_items": int(len(items)), "final_loss": final,
            "final_loss_rel_diff": final[after] / final[before] - 1,
            "parsed_agreement": float((parsed[before] == parsed[after]).mean()),
            "parsed_ari": float(adjusted_rand_score(parsed[before], parsed[after])),
            "categories_used": {name: int(len(np.unique(p))) for name, p in parsed.items()},
            "curves": curves}


# ----------------------------------------------------------------------------------------------- command
def _markdown(result: dict, command: str) -> str:
    cols = ["path", "prompt_tokens_per_s", "computed_tokens_per_s", "speedup_vs_before", "achieved_gflop_per_s",
            "gemm_peak_gflop_per_s", "mfu"]
    lines = [f"# LLM stage paths side by side ({Path(result['data']).parent.name})", "",
             f"`{command}`", "",
             f"Commit {result['git']['commit']}{' (with uncommitted changes)' if result['git']['dirty'] else ''}.", "",
             f"Machine: {result['machine']}, {result['cpu_count']} cores, torch {result['torch']}, "
             f"{result['torch_threads']} torch thread(s); bfloat16 flags: {', '.join(result['cpu_bf16_flags']) or 'none'}."
             + (f" Medians over {result['rounds']} interleaved rounds in one process; the GEMM reference "
                f"is measured beside every configuration in every round." if result["rounds"] else ""), ""]
    if result["rounds"]:
        lines += [
             f"## User-level SFT ({result['sft_steps']} steps of {result['batch_size']} users per round)", "",
             pd.DataFrame(result["sft"])[cols].round(3).to_markdown(index=False), "",
             f"Padding of the stage's batches: {result['sft_padding']['padding_fraction']:.1%} of the padded "
             f"positions (whole prompts).", "",
             f"## Extraction ({result['extract_items']} items per round)", "",
             pd.DataFrame(result["extract"])[cols + ["items_per_s", "max_rel_diff_vs_before",
                                                     "parsed_agreement_vs_before"]].round(6).to_markdown(index=False), ""]
    if "fidelity" in result:
        f = result["fidelity"]
        lines += [f"## Fidelity ({f['steps']} SFT steps from the same start, {Path(f['data']).parent.name})", "",
                  f"Final loss (mean of the last fifth): " +
                  ", ".join(f"{k} {v:.5f}" for k, v in f["final_loss"].items()) +
                  f"; relative difference {f['final_loss_rel_diff']:+.2%}. Parsed categories after training: "
                  f"agreement {f['parsed_agreement']:.1%}, ARI {f['parsed_ari']:.3f}.", ""]
    return "\n".join(lines) + "\n"


def _git_state() -> dict:
    """The commit of the code that ran (and whether the tree had changes), for the result's provenance."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def run(args) -> dict:
    import shlex
    import sys

    settings = _deep_merge(_schema_defaults(load_schema()["properties"]["llm"]), args.settings)
    settings.pop("dataset_overrides", None)
    torch.set_num_threads(args.threads)
    model = str(convert_packaged(args.converted_dir)) if args.model == PACKAGED else args.model
    settings["model"] = args.model
    if args.rounds == 0:  # the fidelity check alone
        if args.fidelity_steps is None:
            raise P2RecError("--rounds 0 measures nothing without --fidelity-steps")
        result = {"data": str(args.data), "rounds": 0, "cpu_bf16_flags": cpu_bf16_support(),
                  **library_versions(torch.device("cpu"))}
    else:
        result = bench_llm(args.data, model, settings, rounds=args.rounds, sft_steps=args.sft_steps,
                           extract_items=args.extract_items)
    if args.fidelity_steps is not None:
        result["fidelity"] = fidelity(args.fidelity_data or args.data, model, copy.deepcopy(settings),
                                      steps=args.fidelity_steps or None)
    command = "python -m p2rec bench llm " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    result["command"] = command
    result["git"] = _git_state()
    if args.out:
        write_json(f"{args.out}.json", result)
        if result["rounds"]:
            flat = [{k: v for k, v in row.items() if k != "rounds"} for row in result["sft"] + result["extract"]]
            write_text(f"{args.out}.csv", pd.DataFrame(flat).to_csv(index=False))
        write_text(f"{args.out}.md", _markdown(result, command))
        print(f"-> {args.out}.json{', .csv' if result['rounds'] else ''}, .md")
    return result
