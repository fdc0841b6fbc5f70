"""Latent categories and prior preference distributions (METHOD.md section 4, stage 1 steps 1-2).

c(i): k-means (scikit-learn, fixed seed, several restarts) on the L2-normalised rows 1..N of the
stage-0 item table. g_u[k]: the share of user u's last ``max_items`` *training* items whose category
is k. Only :attr:`LeaveOneOut.train` is read here: validation and test items never reach g_u.

Per-item arrays are indexed by item id: entry 0 is the padding id (category -1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.io import read_npy


def load_item_table(path: str | Path, num_items: int | None = None, what: str = "item table") -> np.ndarray:
    """Read a ``[num_items + 1, d]`` float table; the error names the file for a wrong shape or NaN."""
    path = Path(path)
    table = read_npy(path, what)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 1:
        raise P2RecError(f"{path}: {what} has shape {tuple(table.shape)}, expected [num_items + 1, d] "
                         f"(row 0 = padding)")
    if num_items is not None and table.shape[0] != num_items + 1:
        raise P2RecError(f"{path}: {what} has {table.shape[0]} rows, expected {num_items + 1} "
                         f"(num_items + 1 = {num_items} items of the dataset + padding row 0)")
    if not np.issubdtype(table.dtype, np.number):
        raise P2RecError(f"{path}: {what} has dtype {table.dtype}, expected a float array")
    table = table.astype(np.float32, copy=False)
    finite = np.isfinite(table[1:])
    if not finite.all():
        rows = np.flatnonzero(~finite.all(1)) + 1
        raise P2RecError(f"{path}: {what} has NaN or infinite values in {len(rows)} row(s) "
                         f"(first item ids: {rows[:5].tolist()})")
    return table


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def kmeans_categories(table: np.ndarray, k: int, seed: int = 0, restarts: int = 10) -> tuple[np.ndarray, dict]:
    """Categories of items 1..N: ``out[i]`` for item id i, ``out[0] = -1``; plus a summary dict."""
    from sklearn.cluster import KMeans

    n = table.shape[0] - 1
    if k > n:
        raise P2RecError(f"config key 'llm.k': {k} categories requested but the item table has only {n} items")
    if k < 2:
        raise P2RecError(f"config key 'llm.k': needs at least 2 categories, got {k}")
    x = l2_normalise(table[1:].astype(np.float64))
    km = KMeans(n_clusters=k, n_init=restarts, random_state=seed)
    labels = km.fit_predict(x)
    out = np.full(n + 1, -1, dtype=np.int64)
    out[1:] = labels
    sizes = np.bincount(labels, minlength=k)
    summary = {"k": k, "items": n, "inertia": float(km.inertia_), "seed": seed, "restarts": restarts,
               "sizes": sizes.tolist(), "empty": int((sizes == 0).sum())}
    return out, summary


def prior_preferences(train: list[np.ndarray], categories: np.ndarray, k: int, max_items: int) -> np.ndarray:
    """g_u: [num_users, k] float32, the category shares of each user's last ``max_items`` training items."""
    g = np.zeros((len(train), k), dtype=np.float32)
    for u, seq in enumerate(train):
        window = np.asarray(seq)[-max_items:]
        if len(window) == 0:
            continue
        cats = categories[window]
        if (cats < 0).any():
            raise P2RecError(f"user row {u}: an item id outside the categorised table ({window[cats < 0][:3].tolist()})")
        g[u] = np.bincount(cats, minlength=k)[:k] / len(window)
    return g


def load_categories(path: str | Path, num_items: int | None = None) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: categories file not found")
    cats = np.load(path, allow_pickle=False)
    if cats.ndim != 1 or (num_items is not None and len(cats) != num_items + 1):
        raise P2RecError(f"{path}: categories have shape {tuple(cats.shape)}, expected [{(num_items or 0) + 1}]")
    return cats.astype(np.int64)


def read_truth(path: str | Path) -> dict[int, str]:
    """Ground-truth categories ``item,category`` (header only where none are known)."""
    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: ground-truth file not found")
    truth: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line_no == 1 or not line.strip():
            continue
        item, _, cat = line.partition(",")
        try:
            truth[int(item)] = cat.strip()
        except ValueError:
            raise P2RecError(f"{path}:{line_no}: '{item}' is not an item id") from None
    return truth


def parse_evaluation(kmeans: np.ndarray, parsed: np.ndarray, truth: dict[int, str] | None = None) -> dict:
    """Agreement (adjusted Rand index, NMI) of the LLM's parsed categories with the k-means categories
    and, where ground truth is known, of both with the truth (over the items that have a truth label)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if kmeans.shape != parsed.shape:
        raise P2RecError(f"parsed categories ({parsed.shape}) and k-means categories ({kmeans.shape}) differ in shape")
    rows = []

    def add(comparison, a, b):
        rows.append({"comparison": comparison, "items": int(len(a)), "ari": float(adjusted_rand_score(a, b)),
                     "nmi": float(normalized_mutual_info_score(a, b))})

    add("parsed_vs_kmeans", parsed[1:], kmeans[1:])
    if truth:
        ids = np.array(sorted(i for i in truth if 0 < i < len(kmeans)))
        labels = np.array([truth[i] for i in ids])
        add("kmeans_vs_truth", kmeans[ids], labels)
        add("parsed_vs_truth", parsed[ids], labels)
    return {"rows": rows, "parsed_categories_used": int(len(np.unique(parsed[1:]))),
            "kmeans_categories_used": int(len(np.unique(kmeans[1:])))}
