"""Information augmentation (METHOD.md 4, stage 2): every item alone through the fine-tuned LLM.

Each item is a "virtual user" with one item, in the same template the fine-tuning used (read from the
adapter folder): its prompt mode, and in the text modes the item texts it saw (the items file whose
sha256 the adapter records; another file is refused). The last-position hidden state of each item is kept (row i = item i, row 0 = padding
zeros), and the head's argmax on it is the LLM's parsed category of the item (entry 0 = -1).

Speed without changing the states beyond float tolerance: the LoRA adapters are merged into the weights
once (one matmul per projection instead of three), the instruction prefix runs once per batch
(``llm.shared_prefix``), and items are batched in order of prompt length (prompts in the text modes differ
in length), so batches carry little padding.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from p2rec import P2RecError
from p2rec.io import save_npy, sha256_file, write_json
from p2rec.llm.categories import load_item_table
from p2rec.llm.loading import library_versions, peak_memory_mb, precision_record
from p2rec.llm.prompt import prompt_needs_items
from p2rec.llm.sft import MODULES_FILE, TEMPLATE_FILE, build_model, load_trained_modules, progress_options


def read_template(adapter: Path) -> dict:
    path = adapter / TEMPLATE_FILE
    if not path.exists() or not (adapter / MODULES_FILE).exists():
        raise P2RecError(f"{adapter}: not a fine-tuned adapter folder ({TEMPLATE_FILE} or {MODULES_FILE} missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def template_item_texts(adapter: Path, meta: dict, items_path: str | Path | None, num_items: int) -> list[str] | None:
    """The item texts the fine-tuning showed: read from ``items_path`` where the adapter's prompt mode shows
    texts and it was trained with an items file (the same file: its sha256 must match), else None."""
    if not prompt_needs_items(meta.get("mode", "soft")):
        return None
    recorded = meta.get("items_sha256")
    if recorded is None:  # text mode trained without texts: items written as item_<id>, as in the fine-tuning
        if items_path is not None:
            print(f"p2rec extract: {adapter} was fine-tuned without item texts; {items_path} is not used",
                  file=sys.stderr, flush=True)
        return None
    if items_path is None:
        raise P2RecError(f"{adapter}: fine-tuned in prompt mode '{meta['mode']}' with item texts; extraction needs "
                         f"the same items file (--items)")
    if sha256_file(items_path) != recorded:
        raise P2RecError(f"{items_path}: not the items file {adapter} was fine-tuned with (sha256 differs); "
                         f"rerun the fine-tuning")
    from p2rec.data.items import read_items

    return read_items(items_path, num_items)


@torch.no_grad()
def extract_items(adapter: str | Path, item_table_path: str | Path, model_path: str, settings: dict,
                  out_hidden: str | Path, out_parsed: str | Path, out_timing: str | Path,
                  batch_size: int = 256, threads: int = 0, progress: bool = True,
                  items_path: str | Path | None = None) -> dict:
    started = time.perf_counter()
    adapter = Path(adapter)
    if threads:
        torch.set_num_threads(threads)
    meta = read_template(adapter)
    sft = dict(meta["settings"])
    # the template and head come from the fine-tuning; model, dtype and device from this stage
    sft.update(model=model_path, dtype=settings["dtype"], device=settings["device"],
               attention=settings.get("attention", "auto"), shared_prefix=settings.get("shared_prefix", False))
    table = load_item_table(item_table_path, what="stage-0 item table")
    num_items = table.shape[0] - 1
    texts = template_item_texts(adapter, meta, items_path, num_items)
    model, device = build_model(model_path, sft, table, int(meta["k"]), adapter=adapter, item_texts=texts)
    load_trained_modules(model, adapter)
    model.eval()
    model.llm.merge_adapter()  # inference only: W + BA once, instead of the adapter's extra matmuls per call
    load_s = time.perf_counter() - started
    d = model.llm.config.hidden_size
    hidden = np.zeros((num_items + 1, d), dtype=np.float32)
    parsed = np.full(num_items + 1, -1, dtype=np.int64)
    # items in order of prompt length (stable): batches padded to a nearly equal width
    lengths = np.array([model.template.length([i]) for i in range(1, num_items + 1)], dtype=np.int64)
    items = np.argsort(lengths, kind="stable") + 1
    tokens = padded = computed = 0
    t0 = time.perf_counter()
    bar = tqdm(total=num_items, unit="item", disable=not progress, desc="extract", **progress_options())
    for start in range(0, num_items, batch_size):
        chunk = items[start:start + batch_size]
        batch = model.template.batch([[int(i)] for i in chunk]).to(device)
        h, logits = model(batch)
        hidden[chunk] = h.cpu().numpy()
        parsed[chunk] = logits.argmax(-1).cpu().numpy()
        tokens += batch.tokens
        padded += batch.padded_tokens
        computed += model.computed_tokens(batch)
        bar.update(len(chunk))
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    run_s = time.perf_counter() - t0
    if not np.isfinite(hidden).all():
        raise P2RecError(f"{adapter}: the fine-tuned LLM produced non-finite hidden states")
    save_npy(out_hidden, hidden)
    save_npy(out_parsed, parsed)
    timing = {"stage": "extract", "items": num_items, "tokens": tokens, "padded_tokens": padded,
              "padding_fraction": 1 - tokens / max(padded, 1), "computed_tokens": computed,
              "shared_prefix": model.shared_prefix, "adapters_merged": True, "extract_s": run_s,
              "prompt_mode": model.template.mode, "tokens_per_item": tokens / max(num_items, 1),
              "tokens_per_s": tokens / max(run_s, 1e-9), "model_load_s": load_s,
              "wall_s": time.perf_counter() - started, "batch_size": batch_size, "hidden_size": d,
              "parsed_categories_used": int(len(np.unique(parsed[1:]))), "k": int(meta["k"]),
              "device": str(device), **precision_record(model.llm, device), "peak_memory_mb": peak_memory_mb(device),
              "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss",
              **library_versions(device)}
    write_json(out_timing, timing)
    return timing
