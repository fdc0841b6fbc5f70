"""Shared preprocessing for raw sources: iterative k-core filtering and chronological sequences."""
from __future__ import annotations

import numpy as np
import pandas as pd


def k_core(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions until both hold."""
    while True:
        user_counts = df["user"].map(df["user"].value_counts())
        item_counts = df["item"].map(df["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return df
        df = df[keep]


def to_sequences(df: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray], dict, dict]:
    """Chronological sequences with users and items renumbered from 1.

    ``df`` has columns user, item, time; ties in time keep the input order (stable sort). Items are
    numbered by first appearance in the user-ordered, chronological stream (the S3-Rec convention).
    Returns (user ids, sequences, user map, item map).
    """
    df = df.reset_index(drop=True)
    df = df.assign(_order=np.arange(len(df)))
    df = df.sort_values(["user", "time", "_order"], kind="stable")
    user_map: dict = {}
    item_map: dict = {}
    users, sequences = [], []
    for user, group in df.groupby("user", sort=False):
        user_map[user] = len(user_map) + 1
        seq = []
        for item in group["item"].tolist():
            if item not in item_map:
                item_map[item] = len(item_map) + 1
            seq.append(item_map[item])
        users.append(user_map[user])
        sequences.append(np.asarray(seq, dtype=np.int64))
    return np.asarray(users, dtype=np.int64), sequences, user_map, item_map
