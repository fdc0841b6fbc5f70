"""Leakage guards of backbone training (and of stage-0 pre-training, which is the same trainer).

* Held-out items never reach training: two datasets with identical training prefixes but different
  validation/test items give identical weights after every epoch; what the trainer feeds the model is
  always a window of the training prefix.
* Validation items only select the epoch; test items influence nothing but the test metrics.
* The test split is evaluated exactly once, after training, with the best-validation weights.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import p2rec.training.trainer as training
from p2rec.workflow.config import check_settings
from p2rec.data.sequences import SequenceData, format_sequences
from p2rec.data.split import leave_one_out
from p2rec.data.synthetic import generate
from p2rec.models.registry import build_backbone
from p2rec.training.runner import run_training

_REAL_EVALUATE = training._evaluate
SETTINGS = check_settings({"backbone": "sasrec", "model": {"num_layers": 1},
                           "train": {"hidden": 16, "max_len": 15, "batch_size": 32, "epochs": 4, "patience": 100,
                                     "device": "cpu", "threads": 1},
                           "eval": {"ks": [5, 10]}})


@pytest.fixture(scope="module")
def base():
    users, sequences, _ = generate(seed=21, users=120, items=70, categories=4)
    return users, sequences, int(max(s.max() for s in sequences))


def with_held_out(base, valid_shift: int, test_shift: int) -> SequenceData:
    """The same users and training prefixes; validation / test items moved to other items."""
    users, sequences, num_items = base
    out = []
    for s in sequences:
        s = s.copy()
        s[-2] = (s[-2] - 1 + valid_shift) % num_items + 1
        s[-1] = (s[-1] - 1 + test_shift) % num_items + 1
        out.append(s)
    return SequenceData(users, out, num_items)


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.endswith("seconds")}


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class Recorder:
    """Wraps training._evaluate: records every evaluation (stage, weights digest)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        real = _REAL_EVALUATE

        def wrapped(model, split, stage, settings, device, candidates=None):
            self.calls.append((stage, digest(model)))
            return real(model, split, stage, settings, device, candidates)

        monkeypatch.setattr(training, "_evaluate", wrapped)

    def epoch_weights(self) -> list[str]:
        """The weights after each training epoch (one validation pass per epoch, before the final passes)."""
        return [d for stage, d in self.calls[:-2] if stage == "valid"]


def train(data: SequenceData, monkeypatch, seed: int = 4):
    recorder = Recorder(monkeypatch)
    split = leave_one_out(data)
    training.seed_everything(seed)
    model = build_backbone("sasrec", data.num_items, 16, 15, **SETTINGS["model"])
    result = training.train_backbone(model, split, SETTINGS, seed, progress=False)
    return result, recorder, model


def test_held_out_items_do_not_change_any_training_step(base, monkeypatch):
    a, rec_a, _ = train(with_held_out(base, 0, 0), monkeypatch)
    b, rec_b, _ = train(with_held_out(base, 17, 29), monkeypatch)
    assert len(rec_a.epoch_weights()) == SETTINGS["train"]["epochs"]
    assert rec_a.epoch_weights() == rec_b.epoch_weights()  # identical weights after every epoch
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert a.valid != b.valid  # the held-out items did change: only evaluation saw them


@pytest.mark.parametrize("samples", ["sequences", "prefixes"])
def test_several_targets_never_reach_a_held_out_item(base, monkeypatch, samples):
    """``train.targets: 3`` looks 3 items ahead of every position: the last training positions must still
    never see the validation or test item (same weights after every epoch whatever those items are)."""
    settings = {**SETTINGS, "train": {**SETTINGS["train"], "targets": 3, "samples": samples, "epochs": 2}}
    weights, losses = [], []
    for valid_item, test_item in ((0, 0), (17, 29)):
        recorder = Recorder(monkeypatch)
        data = with_held_out(base, valid_item, test_item)
        training.seed_everything(4)
        model = build_backbone("sasrec", data.num_items, 16, 15, **settings["model"])
        split = leave_one_out(data)
        result = training.train_backbone(model, split, settings, 4, progress=False)
        weights.append(recorder.epoch_weights())
        losses.append([h["train_loss"] for h in result.history])
    assert len(weights[0]) == 2 and weights[0] == weights[1] and losses[0] == losses[1]


def test_training_batches_hold_training_prefixes_only(base, monkeypatch):
    data = with_held_out(base, 0, 0)
    split = leave_one_out(data)
    windows = {tuple(s[:-2][-(SETTINGS["train"]["max_len"] + 1):].tolist()) for s in data.sequences}
    seen = []
    real = training.loss_on_batch

    def spy(model, batch, *args, **kwargs):
        seen.extend(tuple(np.asarray(b).tolist()) for b in batch)
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(training, "loss_on_batch", spy)
    training.seed_everything(1)
    model = build_backbone("sasrec", data.num_items, 16, 15, **SETTINGS["model"])
    training.train_backbone(model, split, SETTINGS, 1, progress=False)
    assert seen and set(seen) <= windows
    # and a deliberately leaky trainer would be caught: full sequences are not training windows
    assert not {tuple(s[-(SETTINGS["train"]["max_len"] + 1):].tolist()) for s in data.sequences} <= windows


def test_prefix_samples_are_windows_of_the_training_prefix_only(base, monkeypatch):
    """``train.samples: prefixes``: every sample fed to the model is a contiguous piece of a user's training
    items (never a validation or test item), and every training pair is fed once per epoch."""
    data = with_held_out(base, 0, 0)
    split = leave_one_out(data)
    settings = {**SETTINGS, "train": {**SETTINGS["train"], "samples": "prefixes", "epochs": 1}}
    max_len = settings["train"]["max_len"]
    pieces = {tuple(s[:-2][i:j].tolist()) for s in data.sequences for i in range(len(s) - 2)
              for j in range(i + 2, min(len(s) - 2, i + max_len + 1) + 1)}
    seen = []
    real = training.loss_on_batch

    def spy(model, batch, *args, **kwargs):
        assert kwargs.get("last_only", args[4] if len(args) > 4 else False)  # the loss at each sample's end
        seen.extend(tuple(np.asarray(b).tolist()) for b in batch)
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(training, "loss_on_batch", spy)
    training.seed_everything(1)
    model = build_backbone("sasrec", data.num_items, 16, max_len, **settings["model"])
    training.train_backbone(model, split, settings, 1, progress=False)
    assert seen and set(seen) <= pieces
    assert len(seen) == sum(len(s) - 3 for s in data.sequences if len(s) >= 4)  # one per (prefix -> item) pair


def test_test_items_influence_only_the_test_metrics(base, monkeypatch):
    a, _, model_a = train(with_held_out(base, 0, 0), monkeypatch)
    b, _, model_b = train(with_held_out(base, 0, 13), monkeypatch)
    assert digest(model_a) == digest(model_b)
    assert a.valid == b.valid and a.best_epoch == b.best_epoch
    assert [without_times(h) for h in a.history] == [without_times(h) for h in b.history]
    assert a.test != b.test


def test_pretraining_item_table_ignores_test_items_and_validation_only_selects(base, tmp_path, monkeypatch):
    """Stage 0 (`train --save-item-table`): changing test items leaves the saved table byte-identical;
    changing validation items can only pick another epoch of the same training trajectory."""
    trajectory: dict[str, list[np.ndarray]] = {}
    current = []
    real = _REAL_EVALUATE

    def capture(model, split, stage, settings, device, candidates=None):
        if stage == "valid":
            current.append(model.item_table().detach().cpu().numpy().astype(np.float32))
        return real(model, split, stage, settings, device, candidates)

    monkeypatch.setattr(training, "_evaluate", capture)
    tables, metrics = {}, {}
    for name, shifts in {"a": (0, 0), "b": (0, 13), "c": (17, 0)}.items():
        data = with_held_out(base, *shifts)
        (tmp_path / f"{name}.txt").write_text(format_sequences(data.users, data.sequences))
        current.clear()
        metrics[name] = run_training(tmp_path / f"{name}.txt", SETTINGS, 4, tmp_path / f"run_{name}",
                                     save_item_table=tmp_path / f"{name}.npy", progress=False)
        trajectory[name] = list(current[:-1])  # one per epoch (the last valid pass is the final one)
        tables[name] = tmp_path / f"{name}.npy"
    assert tables["a"].read_bytes() == tables["b"].read_bytes()
    for name in "abc":  # every run walks the same per-epoch weights ...
        assert len(trajectory[name]) == SETTINGS["train"]["epochs"]
        for x, y in zip(trajectory[name], trajectory["a"]):
            np.testing.assert_array_equal(x, y)
        # ... and saves the table of its best validation epoch
        np.testing.assert_array_equal(np.load(tables[name]), trajectory["a"][metrics[name]["best_epoch"] - 1])


def test_test_split_is_evaluated_once_with_the_best_validation_weights(base, monkeypatch):
    result, recorder, _ = train(with_held_out(base, 0, 0), monkeypatch)
    stages = [stage for stage, _ in recorder.calls]
    assert stages.count("test") == 1 and stages[-1] == "test"  # once, after everything else
    epoch_weights = recorder.epoch_weights()
    best = result.best_epoch
    assert 1 <= best <= len(epoch_weights)
    test_weights = recorder.calls[-1][1]
    assert test_weights == epoch_weights[best - 1]  # the weights of the best validation epoch
    assert result.history[best - 1]["valid_ndcg@10"] == max(h["valid_ndcg@10"] for h in result.history)
    # the final validation pass (reported valid metrics) uses the same weights
    assert recorder.calls[-2] == ("valid", test_weights)
