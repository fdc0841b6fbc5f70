"""Full-ranking evaluation (METHOD.md section 2), decoupled from the models.

A model is seen only through ``score_batch(padded_inputs) -> scores [B, num_items + 1]``. Ranks are
counted, not sorted: rank = #items scoring strictly higher + #other items scoring equal (ties count
against the model). The padding id 0 is never ranked; history items are masked (-inf) by default, except
the target itself (a repeated interaction must stay rankable).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch


def pad_left(sequences: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Left-pad (with 0) the last ``max_len`` items of each sequence to the batch's longest length."""
    width = max(1, min(max_len, max((len(s) for s in sequences), default=1)))
    out = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-width:]
        if len(tail):
            out[row, width - len(tail):] = tail
    return torch.from_numpy(out)


def equal_length_batches(inputs: Sequence[np.ndarray], max_len: int, batch_size: int) -> list[np.ndarray]:
    """Indices of ``inputs`` in batches of one input length (after truncation to ``max_len``): no padding, so
    no compute is spent on it and attention needs no mask."""
    lengths = np.minimum([len(s) for s in inputs], max_len)
    order = np.argsort(lengths, kind="stable")
    cuts = np.flatnonzero(np.diff(lengths[order])) + 1
    return [chunk for group in np.split(order, cuts) if len(group)
            for chunk in np.array_split(group, -(-len(group) // batch_size))]


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pessimistic rank of each target: strictly higher scores + equal scores of other items."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    higher = (scores > target_scores).sum(1)
    equal = (scores == target_scores).sum(1) - 1
    return higher + equal


def full_ranking(
    score_batch: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[np.ndarray],
    targets: np.ndarray,
    max_len: int,
    mask_history: bool = True,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    candidates: np.ndarray | None = None,
    batching: str = "equal_length",
) -> np.ndarray:
    """Rank each user's target among all items (or among ``candidates`` = target + sampled negatives).

    ``batching``: "equal_length" (inputs of one length per batch, no padding) or "padded" (inputs sorted by
    length, ``batch_size`` per batch, left-padded to the batch's longest; kept as the benchmark's reference)."""
    if batching == "equal_length":
        batches = equal_length_batches(inputs, max_len, batch_size)
    elif batching == "padded":
        order = np.argsort([len(s) for s in inputs], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        raise ValueError(f"unknown batching {batching!r} (equal_length, padded)")
    ranks = np.empty(len(inputs), dtype=np.int64)
    with torch.no_grad():
        for idx in batches:
            batch = [inputs[i] for i in idx]
            seqs = pad_left(batch, max_len).to(device)
            scores = score_batch(seqs).float()
            scores[:, 0] = -math.inf
            tgt = torch.as_tensor(targets[idx], device=scores.device)
            if candidates is not None:
                cand = torch.as_tensor(np.concatenate([targets[idx, None], candidates[idx]], 1), device=scores.device)
                sub = scores.gather(1, cand)
                ranks[idx] = ranks_from_scores(sub, torch.zeros_like(tgt)).cpu().numpy()
                continue
            if mask_history:
                target_scores = scores.gather(1, tgt.view(-1, 1)).clone()
                rows = np.repeat(np.arange(len(batch)), [len(s) for s in batch])
                cols = np.concatenate(batch) if len(rows) else np.zeros(0, dtype=np.int64)
                scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = -math.inf
                scores.scatter_(1, tgt.view(-1, 1), target_scores)
            ranks[idx] = ranks_from_scores(scores, tgt).cpu().numpy()
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user value of 'hr@K' or 'ndcg@K' (for paired tests)."""
    name, k = metric.split("@")
    k = int(k)
    ranks = np.asarray(ranks)
    if name == "hr":
        return (ranks < k).astype(float)
    if name == "ndcg":
        return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}")


def sample_negatives(sequences: Sequence[np.ndarray], num_items: int, n: int, seed: int) -> np.ndarray:
    """Draw ``n`` negatives per user once (items never in the user's whole sequence), for sampled mode."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(sequences), n), dtype=np.int64)
    for row, seq in enumerate(sequences):
        seen = set(seq.tolist())
        if num_items - len(seen) < n:
            raise ValueError(f"user row {row}: only {num_items - len(seen)} unseen items, {n} negatives asked")
        picked: list[int] = []
        while len(picked) < n:
            for item in rng.integers(1, num_items + 1, size=2 * n):
                if int(item) not in seen:
                    seen.add(int(item))
                    picked.append(int(item))
                    if len(picked) == n:
                        break
        out[row] = picked
    return out
