"""Backbone training: every position of a sequence in one causal pass (or, with ``train.samples: prefixes``,
every prefix as its own sample), early stopping on validation, one test evaluation with the
best-validation weights, and resumable checkpoints.

Randomness is re-seeded from (seed, epoch) at the start of every epoch, so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from p2rec import P2RecError, __version__
from p2rec.data.split import LeaveOneOut
from p2rec.evaluation import full_ranking, metrics_from_ranks, pad_left
from p2rec.io import atomic_path
from p2rec.models.losses import chunked_softmax_ce
from p2rec.models.base import SequentialBackbone


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise P2RecError(f"config key 'train.device': '{name}' requested but no CUDA device is visible")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def training_pairs(train: list[np.ndarray], max_len: int, targets: int = 1) -> list[np.ndarray]:
    """The last ``max_len + 1`` training items of every user with at least two (input -> next item).
    ``targets`` > 1 (Caser's T: each position trained toward its next T items): ``targets - 1`` zeros follow,
    so that every input position keeps its place and the missing targets at the end read as padding."""
    pairs = [s[-(max_len + 1):] for s in train if len(s) >= 2]
    if targets > 1:
        pairs = [np.concatenate([p, np.zeros(targets - 1, dtype=p.dtype)]) for p in pairs]
    return pairs


def training_prefixes(train: list[np.ndarray], max_len: int, targets: int = 1) -> list[np.ndarray]:
    """Every (input prefix -> next item) pair as its own sample: the up to ``max_len`` items before each
    training item after the first, followed by that item (views, not copies). This is how RecBole trains;
    with :func:`loss_on_batch`'s ``last_only`` the loss falls on the last position of each sample only.
    ``targets`` > 1: the next ``targets`` items follow the prefix, zero-filled past the user's last item."""
    if targets == 1:
        return [s[max(0, end - max_len):end + 1] for s in train for end in range(1, len(s))]
    out = []
    for s in train:
        for end in range(1, len(s)):
            after = s[end:end + targets]
            out.append(np.concatenate([s[max(0, end - max_len):end], after,
                                       np.zeros(targets - len(after), dtype=s.dtype)]))
    return out


def make_batches(pairs: list[np.ndarray], batch_size: int, rng: np.random.Generator, bucket: bool = True):
    """Shuffled batches. With ``bucket``, users of similar length share a batch (sorted inside windows of
    50 batches, then the batch order is shuffled): batches are padded only to their longest sequence,
    so this removes most padding work without a fixed batch composition."""
    order = rng.permutation(len(pairs))
    if bucket:
        window = 50 * batch_size
        lengths = np.array([len(p) for p in pairs])
        order = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                                for w in np.array_split(order, max(1, -(-len(order) // window)))])
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """Adam; on a CPU or GPU the fused kernel: one pass over every parameter per step instead of one per
    operation, which counts when an epoch has many small steps (prefix samples: 514 on Beauty)."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)


def batch_hidden(model: SequentialBackbone, batch: list[np.ndarray], device: torch.device,
                 last_only: bool = False, targets: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [P, d] and their next items [P], one row per real (input prefix -> next item) pair of
    the batch; ``last_only``: each row's last pair only (prefix samples, :func:`training_prefixes`).
    ``targets`` > 1: rows laid out by :func:`training_pairs` / :func:`training_prefixes` with the same
    ``targets``; a state appears once per real item among its next ``targets``."""
    seqs = pad_left(batch, model.max_len + targets).to(device)
    width = seqs.shape[1] - targets
    inputs = seqs[:, :width]
    if last_only:  # the backbone's shortcut: only the last position's state is computed in full
        hidden, following = model.hidden_last(inputs), seqs[:, width:]  # [B, d], [B, T]
        if targets == 1:  # every sample ends with a real target: no mask, so no host sync on a GPU
            return hidden, following[:, 0]
        valid = following > 0
        return hidden.unsqueeze(1).expand(-1, targets, -1)[valid], following[valid]
    following = torch.stack([seqs[:, 1 + j:width + 1 + j] for j in range(targets)], -1)  # [B, W, T]
    # a pair needs a real input item too: a user shorter than the batch's longest would otherwise add an
    # (empty input -> first item) pair, which prefix samples, the authors' SASRec and RecBole never train
    valid = (following > 0) & (inputs > 0).unsqueeze(-1)
    return model(inputs).unsqueeze(2).expand(-1, -1, targets, -1)[valid], following[valid]


def loss_on_batch(model: SequentialBackbone, batch: list[np.ndarray], loss: str, n_negatives: int,
                  device: torch.device, precision: str = "fp32", last_only: bool = False,
                  targets: int = 1) -> torch.Tensor:
    """Loss over every real (input prefix -> next item) pair of the batch; ``last_only``: over each row's
    last pair only (prefix samples, :func:`training_prefixes`); ``targets``: see :func:`batch_hidden`."""
    h, y = batch_hidden(model, batch, device, last_only, targets)
    table = model.item_table()
    if loss == "ce":
        return chunked_softmax_ce(h, table, y, precision=precision)
    if precision != "fp32":  # checked here, where every caller passes, not only the trainer
        raise P2RecError(f"config key 'train.precision': '{precision}' applies to loss 'ce' only, not '{loss}'")
    if loss in ("bce", "bpr"):
        neg = torch.randint(1, model.num_items + 1, y.shape, device=device)
        neg = torch.where(neg == y, neg % model.num_items + 1, neg)
        pos_logit = (h * table[y]).sum(-1)
        neg_logit = (h * table[neg]).sum(-1)
        if loss == "bpr":  # pairwise: only the margin between the target and its negative counts
            return -F.logsigmoid(pos_logit - neg_logit).mean()
        return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + \
            F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
    if loss == "sampled":
        neg = torch.randint(1, model.num_items + 1, (n_negatives,), device=device)
        pos_logit = (h * table[y]).sum(-1, keepdim=True)
        neg_logit = h @ table[neg].T
        neg_logit = neg_logit.masked_fill(neg.view(1, -1) == y.view(-1, 1), -math.inf)  # accidental hits
        logits = torch.cat([pos_logit, neg_logit], 1)
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=device))
    raise P2RecError(f"config key 'train.loss': unknown loss '{loss}' (ce, bce, bpr, sampled)")


def train_epoch(model: SequentialBackbone, optimizer, pairs: list[np.ndarray], batches, loss: str,
                n_negatives: int, device: torch.device, epoch: int = 0, precision: str = "fp32",
                last_only: bool = False, targets: int = 1) -> tuple[float, int]:
    """One pass over ``batches`` (index arrays into ``pairs``); returns (summed loss x batch size, sequences)."""
    total, count = 0.0, 0
    for idx in batches:
        batch = [pairs[i] for i in idx]
        optimizer.zero_grad(set_to_none=True)
        value = loss_on_batch(model, batch, loss, n_negatives, device, precision, last_only, targets)
        if not torch.isfinite(value):
            raise P2RecError(f"training loss became {value.item()} at epoch {epoch}; lower train.lr")
        value.backward()
        optimizer.step()
        total += value.item() * len(batch)
        count += len(batch)
    return total, count


@dataclass
class TrainResult:
    valid: dict
    test: dict
    test_ranks: np.ndarray
    best_epoch: int
    epochs: int
    history: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=dict)


def run_fingerprint(split: LeaveOneOut, settings: dict, seed: int, model: SequentialBackbone | None = None) -> str:
    """What a checkpoint must match to be resumed: the data (split), every setting that changes the
    numbers (not threads, device, eval batch size or checkpoint frequency) and the initial weights (so an
    other item-init file is never resumed from)."""
    neutral = {"threads", "device", "eval_batch_size", "checkpoint_every"}
    relevant = {k: v for k, v in settings.items() if k != "train"}
    relevant["train"] = {k: v for k, v in settings["train"].items() if k not in neutral}
    digest = hashlib.sha256(json.dumps([relevant, seed], sort_keys=True, default=str).encode())
    for part in (*split.train, split.valid_target, split.test_target, split.users):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    for name, tensor in (model.state_dict().items() if model is not None else ()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def eval_batching(device) -> str:
    """Equal-length batches spend no compute on padding, which is what counts on a CPU. On a GPU the 184
    small batches of ML-1M cost more in launches and copies than the padding of a few large padded batches:
    its validation pass took 4.6-5.3 s of a 5.4-6.3 s epoch on an H200 (16 runs at once), 0.1 s padded."""
    return "padded" if torch.device(device).type == "cuda" else "equal_length"


def _evaluate(model, split: LeaveOneOut, stage: str, settings: dict, device, candidates=None):
    model.eval()
    ranks = full_ranking(model.score_last, split.inputs(stage), split.targets(stage), model.max_len,
                         mask_history=settings["eval"]["mask_history"],
                         batch_size=settings["train"]["eval_batch_size"], device=device, candidates=candidates,
                         batching=eval_batching(device))
    return ranks


def train_backbone(model: SequentialBackbone, split: LeaveOneOut, settings: dict, seed: int,
                   checkpoint_path: str | Path | None = None, candidates: dict | None = None,
                   progress: bool = True) -> TrainResult:
    """Train with early stopping on validation ``eval.select_metric``; test once with the best weights."""
    tr, ev = settings["train"], settings["eval"]
    device = resolve_device(tr["device"])
    # optional key: runs configured before it existed keep their settings, fingerprints and Snakemake params
    precision = tr.get("precision", "fp32")
    if tr.get("threads"):
        torch.set_num_threads(tr["threads"])
    model.to(device)
    optimizer = make_optimizer(model, tr["lr"], tr["weight_decay"], device)
    # optional too: "sequences" (every position of a user in one causal pass) or "prefixes" (RecBole's way)
    prefixes = tr.get("samples", "sequences") == "prefixes"
    targets = tr.get("targets", 1)  # optional as well: Caser's T next items per position
    pairs = (training_prefixes if prefixes else training_pairs)(split.train, model.max_len, targets)
    if not pairs:
        raise P2RecError("no user has two or more training items: nothing to train on")
    select = ev["select_metric"]
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad": 0, "history": [], "best_state": None,
             "train_seconds": 0.0, "eval_seconds": 0.0}
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    fingerprint = run_fingerprint(split, settings, seed, model) if checkpoint_path else None
    if checkpoint_path and checkpoint_path.exists():
        try:
            ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        except Exception as err:  # a truncated or foreign file must not be trusted
            raise P2RecError(f"{checkpoint_path}: unreadable checkpoint ({type(err).__name__}: {err}); "
                             f"delete it to start the run over") from None
        if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint:
            # left by a killed run with other settings, seed or data: never resume from it
            print(f"ignoring {checkpoint_path}: written by a run with other settings, seed or data; starting over",
                  file=sys.stderr, flush=True)
            ckpt = None
    else:
        ckpt = None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
        except Exception as err:  # a truncated or foreign file must not be trusted
            raise P2RecError(f"{checkpoint_path}: unreadable checkpoint ({type(err).__name__}: {err}); "
                             f"delete it to start the run over") from None
        # always said (also with --no-progress): the run log must show that a rerun resumed
        print(f"resuming from {checkpoint_path} after epoch {state['epoch']}", file=sys.stderr, flush=True)
    # what the epochs before a resume cost (their training and validation), so the run's timing covers them
    resumed = {"resumed_after_epoch": state["epoch"],
               "seconds_before_resume": state["train_seconds"] + state["eval_seconds"]} if ckpt is not None else {}
    valid_candidates = candidates.get("valid") if candidates else None
    bar = tqdm(total=tr["epochs"], initial=state["epoch"], desc="epochs", disable=not progress, unit="ep")
    while state["epoch"] < tr["epochs"] and state["bad"] < tr["patience"]:
        epoch = state["epoch"]
        seed_everything(seed * 100_003 + epoch)
        model.train()
        batches = make_batches(pairs, tr["batch_size"], np.random.default_rng([seed, epoch]), tr["bucket"])
        t0 = time.perf_counter()
        total, count = train_epoch(model, optimizer, pairs, batches, tr["loss"], tr["n_negatives"], device,
                                   epoch=epoch + 1, precision=precision, last_only=prefixes, targets=targets)
        _sync(device)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = metrics_from_ranks(_evaluate(model, split, "valid", settings, device, valid_candidates), ev["ks"])
        _sync(device)
        eval_s = time.perf_counter() - t0
        state["train_seconds"] += train_s
        state["eval_seconds"] += eval_s
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": total / count, "train_seconds": train_s,
                                 "eval_seconds": eval_s, **{f"valid_{k}": v for k, v in metrics.items()}})
        if metrics[select] > state["best"]:
            state.update(best=metrics[select], best_epoch=epoch + 1, bad=0,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad"] += 1
        if not progress:  # a log file gets one line per epoch instead of a redrawn bar
            print(f"epoch {state['epoch']}/{tr['epochs']}: loss {total / count:.4f}, valid {select} "
                  f"{metrics[select]:.4f} (best {state['best']:.4f} at epoch {state['best_epoch']}, "
                  f"{state['bad']}/{tr['patience']} without gain), {train_s:.1f} s train, {eval_s:.1f} s eval",
                  file=sys.stderr, flush=True)
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}", **{select: f"{metrics[select]:.4f}"},
                        best=f"{state['best']:.4f}@{state['best_epoch']}")
        if checkpoint_path and (state["epoch"] % tr["checkpoint_every"] == 0):
            with atomic_path(checkpoint_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                            "fingerprint": fingerprint}, tmp)
    bar.close()
    model.load_state_dict(state["best_state"])
    valid_ranks = _evaluate(model, split, "valid", settings, device, valid_candidates)
    t0 = time.perf_counter()
    test_ranks = _evaluate(model, split, "test", settings, device, candidates.get("test") if candidates else None)
    _sync(device)
    test_eval_s = time.perf_counter() - t0
    epochs = state["epoch"]
    timing = {
        "epochs": epochs,
        "best_epoch": state["best_epoch"],
        "train_seconds": state["train_seconds"],
        "seconds_per_epoch": state["train_seconds"] / max(epochs, 1),
        "eval_seconds_per_pass": state["eval_seconds"] / max(epochs, 1),
        "test_eval_seconds": test_eval_s,
        "training_sequences": len(pairs),  # samples per epoch: users, or (prefix -> item) pairs
        "device": str(device),
        **resumed,
        **environment(device),
    }
    return TrainResult(valid=metrics_from_ranks(valid_ranks, ev["ks"]), test=metrics_from_ranks(test_ranks, ev["ks"]),
                       test_ranks=test_ranks, best_epoch=state["best_epoch"], epochs=epochs,
                       history=state["history"], timing=timing)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device | None = None) -> dict:
    info = {
        "p2rec": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
