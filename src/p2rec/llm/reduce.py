"""Reduction of item embeddings to a backbone's item table (METHOD.md 4, stage 2).

PCA (fitted on items 1..N) to the backbone hidden size, then one global rescaling so the table's
standard deviation equals the backbone initialisation scale (``SequentialBackbone.init_std``); the
relative variance of the components is kept. Row 0 (padding) is zeros. The same reduction turns the
stage-0 table into the ``cf_init`` table, so ``cf_init`` and ``p2rec`` differ only in what is reduced.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.io import save_npy, write_json
from p2rec.llm.categories import load_item_table


def reduce_table(table: np.ndarray, hidden: int, init_std: float, source: str = "embeddings") -> tuple[np.ndarray, dict]:
    from sklearn.decomposition import PCA

    x = np.asarray(table[1:], dtype=np.float64)
    n, d = x.shape
    if hidden > min(n, d):
        raise P2RecError(f"{source}: cannot reduce {d}-dimensional embeddings of {n} items to hidden size {hidden} "
                         f"(PCA needs hidden <= min(items, dimensions); for cf_init raise pretrain.train.hidden)")
    pca = PCA(n_components=hidden, svd_solver="full")
    z = pca.fit_transform(x)
    std = float(z.std())
    if not np.isfinite(std) or std == 0:
        raise P2RecError(f"{source}: the embeddings are constant; nothing to reduce")
    out = np.zeros((n + 1, hidden), dtype=np.float32)
    out[1:] = z * (init_std / std)
    info = {"items": n, "input_dim": d, "hidden": hidden, "init_std": init_std,
            "explained_variance": float(pca.explained_variance_ratio_.sum())}
    return out, info


def reduce_file(src: str | Path, out: str | Path, hidden: int, init_std: float, num_items: int | None = None,
                info_path: str | Path | None = None) -> dict:
    table = load_item_table(src, num_items, "item embeddings")
    reduced, info = reduce_table(table, hidden, init_std, source=str(src))
    save_npy(out, reduced)
    if info_path:
        write_json(info_path, {**info, "source": str(src)})
    return info
