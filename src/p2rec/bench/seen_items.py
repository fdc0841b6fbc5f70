"""How often a trained model scores the user's own seen items above the target, with and without masking.

Trains our side of the RecBole comparison exactly as ``p2rec bench recbole`` does (same arguments, same
settings: unmasked selection, seed 2020 by default; RecBole is not run) and, for each test user, counts the
seen items (the test input, without the target) that score above the target, and whether the last one
does. Next to it: test HR/NDCG@10 unmasked (RecBole's protocol for sequential models) and masked (ours).

    python -m p2rec bench seen-item-scores --models sasrec gru4rec --precisions bf16 --threads 1 \\
        --out-dir results/reproduction

writes ``<out-dir>/seen_items.csv`` and ``.md`` and prints the table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from p2rec.bench.recbole_compare import check_args, run_p2rec  # noqa: F401  (the same options and checks)
from p2rec.evaluation import pad_left
from p2rec.io import command_line, markdown_rows, write_table_files
from p2rec.training.trainer import resolve_device

COLUMNS = ["model", "precision", "best_epoch", "hr@10", "ndcg@10", "hr@10_masked", "ndcg@10_masked",
           "users", "mean_seen_above_target", "share_any_seen_above_target", "share_last_seen_above_target"]


def seen_item_stats(model, inputs: list[np.ndarray], targets: np.ndarray, max_len: int, batch: int = 1024,
                    device: str | torch.device = "cpu") -> dict:
    """Per user: how many distinct seen items (not the target) score strictly above the target, and whether
    the last seen item does (``device``: where the model sits; the counting runs on the CPU)."""
    model.eval()
    above, last_above = [], []
    with torch.no_grad():
        for s in range(0, len(inputs), batch):
            seqs, tgts = inputs[s:s + batch], targets[s:s + batch]
            scores = model.score_last(pad_left(seqs, max_len).to(device)).float().cpu()
            for row, seq, target in zip(scores, seqs, tgts):
                seen = np.unique(seq)
                seen = seen[(seen > 0) & (seen != target)]
                t = row[target]
                above.append(int((row[torch.as_tensor(seen, dtype=torch.long)] > t).sum()))
                last_above.append(bool(seq[-1] != target and row[seq[-1]] > t))
    above = np.array(above)
    return {"users": len(above), "mean_seen_above_target": round(float(above.mean()), 3),
            "share_any_seen_above_target": round(float((above > 0).mean()), 4),
            "share_last_seen_above_target": round(float(np.mean(last_above)), 4)}


def run(args) -> list[dict]:
    rows = []
    for name in args.models:
        for precision in args.precisions:
            r = run_p2rec(args, name, precision)
            split = r["split"]
            rows.append({"model": name, "precision": precision, "best_epoch": r["best_epoch"],
                         "hr@10": round(r["test"]["hr@10"], 4), "ndcg@10": round(r["test"]["ndcg@10"], 4),
                         "hr@10_masked": round(r["test_masked"]["hr@10"], 4),
                         "ndcg@10_masked": round(r["test_masked"]["ndcg@10"], 4),
                         **seen_item_stats(r["backbone"], split.inputs("test"), split.targets("test"), args.max_len,
                                          device=resolve_device(args.device))})
    md = "\n".join([
        f"# Seen items scored above the target: p2rec on `{args.data}`", "",
        f"Our side of the RecBole comparison ('bench recbole' settings: hidden {args.hidden}, max length "
        f"{args.max_len}, cross-entropy, batch {args.batch_size}, lr {args.lr}, selection on "
        f"{'masked' if args.mask_history else 'unmasked'} validation NDCG@10, seed {args.seed}). Test users; "
        f"seen items = the test input without the target. hr/ndcg@10: unmasked ranking (RecBole's protocol for "
        f"sequential models); _masked: the same model with seen items masked (the suite's protocol).", "",
        *markdown_rows(rows, COLUMNS), "",
        f"Command: `{command_line(args.argv)}`", ""])
    write_table_files(Path(args.out_dir) / "seen_items", rows, COLUMNS, md)
    print(md)
    return rows
