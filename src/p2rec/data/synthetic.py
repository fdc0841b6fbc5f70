"""Deterministic synthetic dataset with planted latent categories (METHOD.md section 6).

Items belong to ground-truth categories and have Zipf popularity inside their category; each user has a
Dirichlet preference over categories; a sequence stays in the previous item's category with probability
``persistence`` and otherwise draws a category from the user's preference. The result is 5-core filtered
and renumbered; the ground truth travels with it so parsed categories can be scored against it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from p2rec.data.filtering import k_core, to_sequences


def generate(seed: int = 7, users: int = 400, items: int = 240, categories: int = 8, min_len: int = 8,
             mean_len: float = 14, max_len: int = 40, zipf: float = 1.0, dirichlet: float = 0.3,
             persistence: float = 0.6, core: int = 5):
    """Return (user ids, sequences, item -> category array indexed by new item id, with 0 for padding)."""
    rng = np.random.default_rng(seed)
    item_category = np.arange(items) % categories  # balanced planted categories
    rng.shuffle(item_category)
    members = [np.flatnonzero(item_category == c) for c in range(categories)]
    # Zipf popularity inside each category, over a random order of its members
    weights = []
    for m in members:
        ranks = rng.permutation(len(m)) + 1
        w = 1.0 / ranks.astype(float) ** zipf
        weights.append(w / w.sum())
    rows = []
    for u in range(users):
        pref = rng.dirichlet(np.full(categories, dirichlet))
        length = int(np.clip(min_len + rng.geometric(1.0 / max(mean_len - min_len, 1.0)), min_len, max_len))
        cat = rng.choice(categories, p=pref)
        seen: set[int] = set()
        t = 0
        while len(seen) < length and t < 10 * length:
            if t > 0 and rng.random() >= persistence:
                cat = rng.choice(categories, p=pref)
            item = int(rng.choice(members[cat], p=weights[cat]))
            t += 1
            if item in seen:
                continue
            seen.add(item)
            rows.append((u, item, len(seen)))
    df = pd.DataFrame(rows, columns=["user", "item", "time"])
    df = k_core(df, core)
    user_ids, sequences, _, item_map = to_sequences(df)
    truth = np.zeros(len(item_map) + 1, dtype=np.int64)
    for old, new in item_map.items():
        truth[new] = item_category[old]
    return user_ids, sequences, truth
