"""Stage 'train': one backbone run = one directory with metrics, per-user ranks, timing, config, history."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.workflow.config import check_settings
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.evaluation import sample_negatives
from p2rec.io import read_npy, atomic_path, ensure_dir, save_npy, write_json, write_ranks, write_text
from p2rec.models.registry import build_backbone
from p2rec.training.trainer import seed_everything, train_backbone


def load_item_init(path: str | Path) -> np.ndarray:
    return np.asarray(read_npy(path, "item-embedding file"), dtype=np.float32)


def run_training(data_path: str | Path, settings: dict, seed: int, out_dir: str | Path,
                 item_init: str | Path | None = None, save_item_table: str | Path | None = None,
                 progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    settings = check_settings(settings)  # the CLI takes settings as JSON: same checks as the config
    started = time.perf_counter()
    data = read_sequences(data_path)
    split = leave_one_out(data)
    tr = settings["train"]
    seed_everything(seed)
    model = build_backbone(settings["backbone"], data.num_items, tr["hidden"], tr["max_len"], **settings["model"])
    if item_init:
        model.load_item_table(load_item_init(item_init), source=str(item_init))
    candidates = None
    if settings["eval"]["mode"] == "sampled":
        # drawn once from a fixed seed (not per pass); the same file-level draw for every run of a dataset
        try:
            negs = sample_negatives(data.sequences, data.num_items, settings["eval"]["n_sampled"],
                                    settings["eval"]["sampled_seed"])
        except ValueError as err:
            raise P2RecError(f"config key 'eval.n_sampled': {err} ({data_path})") from None
        candidates = {"valid": negs, "test": negs}
    # inputs are checked: only now touch the run directory (and drop temp files of a killed attempt)
    ensure_dir(out_dir)
    for stale in out_dir.glob(".*.tmp*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
    result = train_backbone(model, split, settings, seed, checkpoint_path=out_dir / "checkpoint.pt",
                            candidates=candidates, progress=progress)
    write_ranks(out_dir / "ranks.csv.gz", split.users, result.test_ranks)
    if result.history:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
        write_text(out_dir / "history.csv", buf.getvalue())
    if save_item_table:
        save_npy(save_item_table, model.item_table().detach().cpu().numpy().astype(np.float32))
    # a resumed run: this process's time plus the epochs the interrupted one finished (its checkpoint's)
    timing = dict(result.timing,
                  total_seconds=time.perf_counter() - started + result.timing.get("seconds_before_resume", 0.0))
    write_json(out_dir / "timing.json", timing)
    write_json(out_dir / "config.json", {"seed": seed, "data": str(data_path), "item_init": str(item_init) if item_init else None,
                                         **settings})
    metrics = {"valid": result.valid, "test": result.test, "best_epoch": result.best_epoch, "epochs": result.epochs,
               "users": int(len(split.users)), "seed": seed, "status": "ok"}
    write_json(out_dir / "metrics.json", metrics)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
