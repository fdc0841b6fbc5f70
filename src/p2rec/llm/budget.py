"""The default instance-level budget, resolved from the data, and the cost an LLM job writes to its log first.

A dataset with no ``instance.max_samples`` gets as many instances per epoch as its user-level epoch has users
(``p2rec.llm.settings.USERS_BUDGET``); the workflow cannot know that number when it builds the DAG, so the sft
command resolves it here from the prepared data it trains on.

Estimates divide the stage's prompt tokens (the default template: 16 fixed tokens plus one per item shown) by
the throughput measured in the committed timings below: a 2-core x86_64 CPU, one torch thread, the packaged
SmolLM2-135M in float32. Another model, more threads or a GPU change the real time; the message says so.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from p2rec.llm.settings import USERS_BUDGET

#: tokens/s of each stage, measured on Beauty; tests/test_bad_inputs.py checks them against these files
MEASURED = {
    "user": (153.95, "results/archive/llm/beauty/p2rec/timing.json"),
    "instance": (152.61, "results/archive/llm/beauty/instance/timing.json"),
    "extract": (403.16, "results/archive/llm/beauty/p2rec/extract_timing.json"),
}
#: fixed prompt tokens of the default template (10 before the items, 6 after; recorded in the same files)
FIXED_TOKENS = 16
#: an estimate above this many seconds is written to the job's log before the stage starts
LARGE_S = 900.0
STAGE_NAMES = {"user": "user-level SFT", "instance": "instance-level SFT", "extract": "item extraction"}


def resolve_budget(settings: dict, users: int) -> tuple[dict, str | None]:
    """``settings`` with a ``USERS_BUDGET`` instance budget replaced by ``users``, and a line for the log
    saying so (None when the budget was set explicitly, or the mode has none)."""
    instance = settings.get("instance")
    if not isinstance(instance, dict) or instance.get("max_samples") != USERS_BUDGET:
        return settings, None
    resolved = {**settings, "instance": {**instance, "max_samples": int(users)}}
    return resolved, (f"instance-level budget: {users:,} instances per epoch, as many as the user-level epoch has "
                      f"users (the default: llm.instance.max_samples is unset; set it, or "
                      f"llm.dataset_overrides.<dataset>.instance.max_samples, to choose another)")


def sft_tokens(mode: str, train_lengths: np.ndarray, max_items: int, max_samples: int | None) -> tuple[int, float]:
    """Samples and prompt tokens of one epoch (instance level: the expected tokens of the sampled subset)."""
    lengths = np.asarray(train_lengths, dtype=np.int64)
    if mode == "user":  # one sample per user with a training item: its last max_items items
        shown = np.minimum(lengths[lengths >= 1], max_items)
        return int(len(shown)), float(shown.sum() + FIXED_TOKENS * len(shown))
    n = np.maximum(lengths - 1, 0)  # prefixes t = 1 .. len-1, each showing min(t, max_items) items
    m = int(max_items)
    items = np.where(n <= m, n * (n + 1) // 2, m * (m + 1) // 2 + (n - m) * m)
    total = int(n.sum())
    tokens = float(items.sum() + FIXED_TOKENS * total)
    if max_samples is None or max_samples >= total or total == 0:
        return total, tokens
    return int(max_samples), tokens * max_samples / total


def estimate_line(stage: str, samples: int, tokens: float, epochs: int = 1, prompt_mode: str = "soft") -> str | None:
    """The log line of a stage whose estimated time is above ``LARGE_S``, else None."""
    tokens_per_s, source = MEASURED[stage]
    seconds = tokens * epochs / tokens_per_s
    if seconds <= LARGE_S:
        return None
    what = "items" if stage == "extract" else "samples"
    text_note = "; prompts with item texts take several tokens per item, so more" if "text" in prompt_mode else ""
    return (f"estimated cost of {STAGE_NAMES[stage]}: {samples:,} {what} x {epochs} epoch(s), about "
            f"{tokens * epochs:,.0f} prompt tokens: about {_duration(seconds)} ({seconds:,.0f} s) at the "
            f"{tokens_per_s:.1f} tokens/s measured for it with the packaged SmolLM2-135M on one CPU thread "
            f"({source}){text_note}; another model, more threads or a GPU change this")


def plan_sft(mode: str, data_path: str | Path, settings: dict) -> dict:
    """The settings the sft stage runs with (the default budget resolved), after writing to stderr (the job's
    log) the budget when it is the default and the estimated cost when it is large."""
    from p2rec.data.sequences import read_sequences
    from p2rec.data.split import leave_one_out

    train = leave_one_out(read_sequences(data_path)).train
    budget_line, budget = None, None
    if mode == "instance":
        settings, budget_line = resolve_budget(settings, len(train))
        budget = (settings.get("instance") or {}).get("max_samples")
    samples, tokens = sft_tokens(mode, np.array([len(s) for s in train]), int(settings.get("max_items", 20)), budget)
    line = estimate_line(mode, samples, tokens, int(settings.get("epochs", 1)),
                         (settings.get("prompt") or {}).get("mode", "soft"))
    for text in (budget_line, line):
        if text and os.environ.get("RANK", "0") == "0":  # once, not by every process of a torchrun job
            print(f"p2rec sft: {text}", file=sys.stderr, flush=True)
    return settings


def log_extract_estimate(item_table_path: str | Path, settings: dict) -> None:
    """Every item once through the LLM: the estimated cost, when large, to stderr (the job's log)."""
    try:
        rows = int(np.load(item_table_path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError, IndexError):
        return  # the stage itself names a bad table
    items = max(rows - 1, 0)
    line = estimate_line("extract", items, float(items * (FIXED_TOKENS + 1)),
                         prompt_mode=(settings.get("prompt") or {}).get("mode", "soft"))
    if line:
        print(f"p2rec extract: {line}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
