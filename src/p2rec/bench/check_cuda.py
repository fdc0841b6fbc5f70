"""Check the LLM stages' CUDA path against their CPU path on one prepared dataset, with a tiny LLM.

User-level SFT runs on CUDA (bf16 by `dtype: auto`); the resulting adapter is then read by extraction on
CUDA (bf16) and on CPU (fp32). Prints and writes (``--out``) the devices and dtypes the stages recorded, SFT
tokens/s and peak GPU memory, and how closely the two extractions agree (parsed-category agreement,
correlation of the hidden states). Needs a CUDA device; stops with an error where there is none.

    python -m p2rec bench check-cuda --data results/data/synthetic/sequences.txt --out cuda_check.json
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from p2rec import P2RecError
from p2rec.bench.commands import REPO
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.llm import categories as cat
from p2rec.llm.extract import extract_items
from p2rec.llm.settings import sft_settings
from p2rec.llm.sft import run_sft
from p2rec.llm.tiny import build_tiny_llm
from p2rec.workflow.config import validate_config

K = 8


def settings(device: str) -> dict:
    """The committed config's user-level SFT settings (prompt, LoRA, batch, epochs), for the tiny model, with
    K = 8 and a larger learning rate so that one short epoch moves the head."""
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    return {**sft_settings(config, "synthetic", "user"), "model": "tiny", "device": device, "k": K, "lr": 1e-3}


def run(args) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise P2RecError("no CUDA device visible")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data = read_sequences(args.data)
        split = leave_one_out(data)
        num_items = max(int(s.max()) for s in data.sequences)
        table = np.random.default_rng(0).normal(size=(num_items + 1, 16)).astype(np.float32)
        table[0] = 0
        np.save(d / "table.npy", table)
        cats, _ = cat.kmeans_categories(table, K, seed=0, restarts=2)
        np.save(d / "categories.npy", cats)
        np.save(d / "g_u.npy", cat.prior_preferences(split.train, cats, K, 20))
        llm = str(build_tiny_llm(d / "tiny", hidden=64, layers=2, heads=4))
        sft_timing = run_sft("user", args.data, d / "table.npy", d / "categories.npy", llm, settings(args.device),
                             d / "sft", g_u_path=d / "g_u.npy", progress=False)
        ext = {}
        for device in (args.device, "cpu"):
            ext[device] = extract_items(d / "sft" / "adapter", d / "table.npy", llm,
                                        {"dtype": "auto", "device": device}, d / f"h_{device}.npy",
                                        d / f"p_{device}.npy", d / f"t_{device}.json", progress=False)
        h_gpu, h_cpu = np.load(d / f"h_{args.device}.npy")[1:], np.load(d / "h_cpu.npy")[1:]
        p_gpu, p_cpu = np.load(d / f"p_{args.device}.npy")[1:], np.load(d / "p_cpu.npy")[1:]
        summary = {
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "torch": torch.__version__,
            "sft": {k: sft_timing.get(k) for k in ("device", "dtype", "samples", "tokens", "tokens_per_s",
                                                   "train_s", "peak_memory_mb", "history")},
            "extract": {dev: {k: t.get(k) for k in ("device", "items", "extract_s", "tokens_per_s", "peak_memory_mb")} for dev, t in ext.items()},
            "hidden_finite": bool(np.isfinite(h_gpu).all()),
            "hidden_correlation_cuda_bf16_vs_cpu_fp32": float(np.corrcoef(h_gpu.ravel(), h_cpu.ravel())[0, 1]),
            "parsed_agreement_cuda_vs_cpu": float((p_gpu == p_cpu).mean()),
        }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return summary
