"""Parsed and k-means categories against a dataset's real categories (METHOD.md section 6).

The real categories come from the dataset's side information (``data/{dataset}/item_categories.csv``, written
by ``prepare-items``: Beauty and Yelp attribute categories, ML-1M genres; one category per item, chosen as
docs/data.md describes). The rows have the form of ``parse_eval.json`` (adjusted Rand index and NMI, over the
items that have a category) so that ``parse-table`` puts them into the same categories table.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.llm.categories import load_categories


def read_item_categories(path: str | Path) -> dict[int, str]:
    """``item,category`` (CSV, header first; a category may be quoted) as {item id: category}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise P2RecError(f"{path}: cannot read the item categories ({err})") from None
    out: dict[int, str] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if line_no == 1 or not row:
            continue
        if len(row) != 2:
            raise P2RecError(f"{path}:{line_no}: expected 'item,category', found {len(row)} field(s)")
        try:
            out[int(row[0])] = row[1]
        except ValueError:
            raise P2RecError(f"{path}:{line_no}: {row[0]!r} is not an item id") from None
    return out


def agreement(a, b) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"items": int(len(a)), "ari": float(adjusted_rand_score(a, b)), "nmi": float(normalized_mutual_info_score(a, b))}


def attribute_evaluation(kmeans: np.ndarray, parsed: np.ndarray, categories: dict[int, str]) -> dict:
    """ARI and NMI of the k-means and of the parsed categories with the items' real categories."""
    if kmeans.shape != parsed.shape:
        raise P2RecError(f"parsed categories ({parsed.shape}) and k-means categories ({kmeans.shape}) differ in shape")
    ids = np.array(sorted(i for i in categories if 0 < i < len(kmeans)), dtype=np.int64)
    if len(ids) == 0:
        raise P2RecError("no item of the categorised table has a real category")
    labels = np.array([categories[int(i)] for i in ids])
    rows = [{"comparison": "kmeans_vs_attributes", **agreement(kmeans[ids], labels)},
            {"comparison": "parsed_vs_attributes", **agreement(parsed[ids], labels)}]
    return {"rows": rows, "attribute_categories_used": int(len(np.unique(labels)))}


def evaluate_files(kmeans_path, parsed_path, categories_path) -> dict:
    kmeans = load_categories(kmeans_path)
    parsed = load_categories(parsed_path, len(kmeans) - 1)
    return attribute_evaluation(kmeans, parsed, read_item_categories(categories_path))
