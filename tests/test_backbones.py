"""Every registered backbone: shapes, causality, padding invariance, overfitting a tiny dataset, the three
losses, and one epoch through the trainer from a validated config. Parametrised over the registry, so a
new backbone is covered as soon as it is registered."""
from __future__ import annotations

import csv
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from p2rec import P2RecError
from p2rec.workflow.config import train_settings, validate_config
from p2rec.evaluation import full_ranking, pad_left, ranks_from_scores
from p2rec.models.base import SequentialBackbone
from p2rec.models.registry import BACKBONES, build_backbone
from p2rec.training.trainer import batch_hidden, eval_batching, loss_on_batch, training_pairs, training_prefixes
from tests.conftest import write_sequence_file

NAMES = sorted(BACKBONES)
NUM_ITEMS, HIDDEN, MAX_LEN = 40, 16, 20
CPU = torch.device("cpu")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: thread hand-offs cost more than they save (and the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str, seed: int = 0, num_items: int = NUM_ITEMS, **params) -> SequentialBackbone:
    torch.manual_seed(seed)
    return build_backbone(name, num_items, HIDDEN, MAX_LEN, **params)


def _perturbed(name: str, seed: int = 0, **params) -> SequentialBackbone:
    """A model in eval mode with every weight moved away from its initialisation, so that any path
    from an input position to an output position carries a clearly visible signal."""
    model = _model(name, seed, **params)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        model.item_emb.weight[0].zero_()  # the padding row is zero by contract
    return model.eval()


def _config(name: str, **extra) -> dict:
    """A minimal valid configuration training ``name`` on a synthetic dataset, with defaults filled."""
    raw = {"catalog": {"tiny": {"source": "synthetic"}}, "datasets": ["tiny"], "backbones": [name],
           "variant_catalog": {"none": {"item_init": None}}, "variants": ["none"], **extra}
    return validate_config(raw)


def _random_items(shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, NUM_ITEMS + 1, shape, generator=gen)


def causality_violation(model, seqs: torch.Tensor) -> tuple[float, float]:
    """(largest change of an output at a position <= t when only items after t change,
    smallest change at position t + 1 itself, which must react)."""
    with torch.no_grad():
        base = model(seqs)
        leak, react = 0.0, float("inf")
        for t in range(seqs.shape[1] - 1):
            other = seqs.clone()
            tail = other[:, t + 1:]
            other[:, t + 1:] = torch.where(tail > 0, tail % NUM_ITEMS + 1, tail)  # a different real item
            out = model(other)
            leak = max(leak, (out[:, :t + 1] - base[:, :t + 1]).abs().max().item())
            react = min(react, (out[:, t + 1] - base[:, t + 1]).abs().max().item())
    return leak, react


def padding_violation(model, seqs: torch.Tensor, extra: int) -> float:
    """Largest change of an output at a real position when ``extra`` padding columns are added on the left."""
    with torch.no_grad():
        base = model(seqs)
        padded = model(torch.cat([torch.zeros(len(seqs), extra, dtype=seqs.dtype), seqs], 1))[:, extra:]
    real = seqs > 0
    return (padded[real] - base[real]).abs().max().item()


# ---------------------------------------------------------------- interface and shapes

@pytest.mark.parametrize("name", NAMES)
def test_defaults_match_the_constructor(name):
    cls = BACKBONES[name]
    params = inspect.signature(cls.__init__).parameters
    assert set(cls.defaults) <= set(params), f"{name}: defaults name unknown constructor arguments"
    for key, value in cls.defaults.items():
        assert params[key].default == value, f"{name}: defaults[{key!r}] differs from the constructor default"
    config = _config(name, backbone_params={name: dict(cls.defaults)})
    assert train_settings(config, "tiny", name)["model"] == cls.defaults
    with pytest.raises(P2RecError, match=f"backbone_params.{name}"):
        _config(name, backbone_params={name: {"no_such_parameter": 1}})


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    model = _model(name).eval()
    for t in (1, 7, MAX_LEN):
        seqs = _random_items((3, t), seed=t)
        seqs[0, : t // 2] = 0
        out = model(seqs)
        assert out.shape == (3, t, HIDDEN)
        assert torch.isfinite(out).all()
    longer = _random_items((2, MAX_LEN + 5), seed=1)
    assert model(longer).shape == (2, MAX_LEN, HIDDEN)  # at most the last max_len items are read
    assert torch.equal(model(longer), model(longer[:, -MAX_LEN:]))
    assert model.score_last(_random_items((4, 6), seed=2)).shape == (4, NUM_ITEMS + 1)
    assert model.item_table().shape == (NUM_ITEMS + 1, HIDDEN)
    table = np.random.default_rng(0).normal(size=(NUM_ITEMS + 1, HIDDEN)).astype(np.float32)
    model.load_item_table(table)
    assert torch.allclose(model.item_table()[1:], torch.from_numpy(table[1:]))
    assert model.item_table()[0].abs().sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_training_mode_runs_and_has_gradients(name):
    model = _model(name).train()
    model(_random_items((4, 9), seed=3)).pow(2).mean().backward()
    assert model.item_emb.weight.grad is not None
    assert all(p.grad is not None for p in model.parameters()), "some parameter is never used"


# ---------------------------------------------------------------- causality and padding

@pytest.mark.parametrize("name", NAMES)
def test_causal_changing_later_items_never_changes_earlier_outputs(name):
    model = _perturbed(name)
    seqs = _random_items((4, 12), seed=4)
    seqs[1, :3] = 0  # left padding in one row
    leak, react = causality_violation(model, seqs)
    assert leak < 1e-5, f"{name}: an output at position <= t changed by {leak:.3g} when items after t changed"
    assert react > 1e-4, f"{name}: the output at t + 1 ignores the item at t + 1"


@pytest.mark.parametrize("name", NAMES)
def test_left_padding_does_not_change_real_positions(name):
    model = _perturbed(name)
    seqs = _random_items((4, 10), seed=5)
    seqs[0, :4] = 0
    seqs[2, :9] = 0  # a single real item
    for extra in (1, 6):
        err = padding_violation(model, seqs, extra)
        assert err < 1e-5, f"{name}: {extra} more padding column(s) changed a real position by {err:.3g}"
    # a user alone (padded to its own length) scores as inside a batch with longer users
    alone = model.score_last(seqs[2:3, 9:])
    assert torch.allclose(alone, model.score_last(seqs)[2:3], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_score_last_equals_the_last_output_of_forward(name):
    """A backbone may shortcut inference (SASRec computes only the last query of its last block); the
    scores must equal the full forward's last position times the item table, padded or not."""
    model = _perturbed(name)
    padded = _random_items((5, 12), seed=7)
    padded[1, :5] = 0
    padded[3, :11] = 0
    for seqs in (padded, _random_items((3, 12), seed=8)):
        reference = model.forward(seqs)[:, -1, :] @ model.item_table().T
        assert torch.allclose(model.score_last(seqs), reference, atol=1e-5), name


def test_sasrec_ffn_size_widens_only_the_feed_forward_layer():
    narrow, wide = _model("sasrec"), _model("sasrec", ffn_size=4 * HIDDEN)
    grown = sum(p.numel() for p in wide.parameters()) - sum(p.numel() for p in narrow.parameters())
    # per block: two linear maps of HIDDEN x (4H - H) weights, plus 4H - H more first-layer biases
    assert grown == len(wide.blocks) * (2 * HIDDEN * 3 * HIDDEN + 3 * HIDDEN)
    assert wide.score_last(_random_items((2, 6), seed=1)).shape == (2, NUM_ITEMS + 1)
    # a config may set it, but it stays out of the defaults: runs that do not set it keep their settings
    config = _config("sasrec", backbone_params={"sasrec": {"ffn_size": 256}})
    assert train_settings(config, "tiny", "sasrec")["model"]["ffn_size"] == 256
    assert "ffn_size" not in train_settings(_config("sasrec"), "tiny", "sasrec")["model"]


def test_sasrec_post_norm_layout_is_causal_padding_blind_and_shortcut_exact():
    """RecBole's block layout (``norm: post``) keeps the contracts every backbone keeps."""
    model = _perturbed("sasrec", norm="post", ffn_size=4 * HIDDEN)
    seqs = _random_items((4, 10), seed=5)
    leak, react = causality_violation(model, seqs)
    assert leak < 1e-5 and react > 1e-4
    seqs[0, :4] = 0
    seqs[2, :9] = 0
    assert padding_violation(model, seqs, 3) < 1e-5
    reference = model.forward(seqs)[:, -1, :] @ model.item_table().T
    assert torch.allclose(model.score_last(seqs), reference, atol=1e-5)
    # it is another model, not the default one renamed
    assert not torch.allclose(model.score_last(seqs), _perturbed("sasrec", ffn_size=4 * HIDDEN).score_last(seqs))
    with pytest.raises(P2RecError, match=r"backbone_params\.sasrec\.norm': 'pre' or 'post', got 'middle'"):
        _model("sasrec", norm="middle")


def _assert_backbone_contracts(model: SequentialBackbone, padded: torch.Tensor) -> None:
    """Causal, blind to padding, and its last-position shortcut scores as the full forward does."""
    leak, react = causality_violation(model, _random_items((4, 10), seed=5))
    assert leak < 1e-5 and react > 1e-4
    assert padding_violation(model, padded, 3) < 1e-5
    reference = model.forward(padded)[:, -1, :] @ model.item_table().T
    assert torch.allclose(model.score_last(padded), reference, atol=1e-5)


def test_sasrec_positions_from_start_make_every_position_a_prefix_on_its_own():
    """``positions: from_start``: the state at t equals that of the prefix ending at t fed alone, which is what
    makes one causal pass the same as prefix training; counted from the end it differs (the reason to offer it)."""
    seqs = _random_items((4, 10), seed=6)
    seqs[1, :3] = 0
    by_start, by_end = (_perturbed("sasrec", positions=p) for p in ("from_start", "from_end"))
    t = 6  # the prefix seqs[:, :7]
    for model, same in ((by_start, True), (by_end, False)):
        model.eval()
        with torch.no_grad():
            whole, prefix = model.forward(seqs)[:, t], model.forward(seqs[:, :t + 1])[:, -1]
        assert torch.allclose(whole, prefix, atol=1e-5) == same
    _assert_backbone_contracts(by_start, seqs)  # and the contracts of every backbone still hold
    with pytest.raises(P2RecError, match=r"backbone_params\.sasrec\.positions': 'from_end' or 'from_start'"):
        _model("sasrec", positions="middle")


def test_sasrec_without_attention_output_dropout_differs_in_training_only():
    """``attention_out_dropout: false`` (the ML-1M reference) removes one dropout: the same weights score
    alike in evaluation, and training draws differ; a non-boolean fails naming the config key."""
    seqs = _random_items((4, 10), seed=8)
    with_drop, without = _model("sasrec", dropout=0.5), _model("sasrec", dropout=0.5, attention_out_dropout=False)
    assert isinstance(without.blocks[0].attn_out_drop, torch.nn.Identity)
    assert torch.allclose(with_drop.eval().score_last(seqs), without.eval().score_last(seqs))
    outputs = []
    for model in (with_drop.train(), without.train()):
        torch.manual_seed(3)
        outputs.append(model(seqs))
    assert not torch.allclose(*outputs)
    _assert_backbone_contracts(without.eval(), seqs)
    with pytest.raises(P2RecError, match=r"attention_out_dropout': true or false, got 'no'"):
        _model("sasrec", attention_out_dropout="no")


@pytest.mark.parametrize("option,value,message", [
    ("activation", "relu", r"activation': one of \['gelu', 'relu'\], got 'bad'"),
    ("keys", "raw", r"keys': 'normalized' or 'raw', got 'bad'"),
    ("qkv_init", "xavier", r"qkv_init': 'normal' or 'xavier', got 'bad'")])
def test_sasrec_reference_options_are_other_models_with_the_same_contracts(option, value, message):
    """``activation: relu`` (the SASRec paper's feed-forward), ``keys: raw`` (keys and values from the
    un-normalised block input, the authors' code) and ``qkv_init: xavier`` (Glorot-initialised projections)
    change the scores and keep causality, padding blindness and the last-query shortcut; an unknown value
    fails naming the config key."""
    seqs = _random_items((4, 10), seed=8)
    seqs[2, :4] = 0
    other = _perturbed("sasrec", **{option: value})
    default = _perturbed("sasrec")
    if option == "activation":
        assert isinstance(other.blocks[0].ffn[1], torch.nn.ReLU)
        assert isinstance(default.blocks[0].ffn[1], torch.nn.GELU)
    if option == "qkv_init":  # Glorot's bound for a (3 x 16) x 16 matrix, against std 0.02
        weight = _model("sasrec", qkv_init="xavier").blocks[0].qkv.weight
        assert weight.abs().max() <= (6 / (4 * HIDDEN)) ** 0.5 and weight.std() > 0.1
        assert _model("sasrec").blocks[0].qkv.weight.std() < 0.03
        other, default = _model("sasrec", qkv_init="xavier").eval(), _model("sasrec").eval()
    assert not torch.allclose(other.score_last(seqs), default.score_last(seqs))
    _assert_backbone_contracts(other, seqs)
    with pytest.raises(P2RecError, match=r"backbone_params\.sasrec\." + message):
        _model("sasrec", **{option: "bad"})


@pytest.mark.parametrize("name", NAMES)
def test_padded_and_equal_length_evaluation_rank_alike(name):
    """A GPU evaluates in padded batches, a CPU in equal-length ones: every user's rank must not depend on it."""
    model = _perturbed(name)
    gen = np.random.default_rng(3)
    inputs = [gen.integers(1, NUM_ITEMS + 1, size=n) for n in gen.integers(1, 2 * MAX_LEN, size=30)]
    targets = gen.integers(1, NUM_ITEMS + 1, size=len(inputs))
    ranks = {b: full_ranking(model.score_last, inputs, targets, MAX_LEN, batch_size=7, batching=b)
             for b in ("padded", "equal_length")}
    assert np.array_equal(ranks["padded"], ranks["equal_length"]), name
    assert eval_batching("cpu") == "equal_length" and eval_batching(torch.device("cuda", 1)) == "padded"


class _Bidirectional(SequentialBackbone):
    """Deliberately broken: every position sees the mean of the whole row (future and padding included)."""
    defaults: dict = {}

    def forward(self, seqs):
        x = self.item_emb(seqs)
        return x + x.mean(1, keepdim=True) + 0.1


def test_the_checks_catch_a_leaking_backbone():
    torch.manual_seed(0)
    model = _Bidirectional(NUM_ITEMS, HIDDEN, MAX_LEN).eval()
    seqs = _random_items((3, 8), seed=6)
    seqs[0, :2] = 0
    assert causality_violation(model, seqs)[0] > 1e-3
    assert padding_violation(model, seqs, 3) > 1e-3


# ---------------------------------------------------------------- learning

def _chains(users: int = 8, length: int = 6, seed: int = 0) -> list[np.ndarray]:
    """Disjoint item chains with shuffled ids: every next item is determined by the previous one."""
    ids = np.random.default_rng(seed).permutation(np.arange(1, users * length + 1))
    return [ids[u * length:(u + 1) * length].astype(np.int64) for u in range(users)]


def _hr1_on_training_positions(model, seqs: list[np.ndarray]) -> float:
    """HR@1 of the next item at every position of the training rows, laid out as the trainer lays them."""
    rows = pad_left(seqs, model.max_len + 1)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    model.eval()
    with torch.no_grad():
        scores = model(inputs)[targets > 0] @ model.item_table().T
    model.train()
    scores[:, 0] = -math.inf
    return float((ranks_from_scores(scores, targets[targets > 0]) == 0).float().mean())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_overfits_a_tiny_dataset(name, precision):
    seqs = _chains()
    model = _model(name, num_items=48).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first = hr1 = None
    for step in range(1, 301):
        optimizer.zero_grad()
        loss = loss_on_batch(model, seqs, "ce", 0, CPU, precision=precision)
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
        if step % 25 == 0:
            hr1 = _hr1_on_training_positions(model, seqs)
            if hr1 == 1.0:
                break
    assert loss.item() < 0.5 * first, f"{name}: training loss {first:.3f} -> {loss.item():.3f}"
    assert hr1 == 1.0, f"{name}: HR@1 on the training sequences reached only {hr1:.3f} after {step} steps"


@pytest.mark.parametrize("loss", ["ce", "bce", "bpr", "sampled"])
@pytest.mark.parametrize("name", NAMES)
def test_every_loss_runs_and_decreases(name, loss):
    seqs = _chains(seed=1)
    model = _model(name, num_items=48).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def measured() -> float:
        """The loss without dropout, averaged over fixed draws of negatives; training's RNG is untouched."""
        model.eval()
        values = []
        with torch.random.fork_rng(), torch.no_grad():
            for draw in range(5):
                torch.manual_seed(draw)
                values.append(loss_on_batch(model, seqs, loss, 8, CPU).item())
        model.train()
        return float(np.mean(values))

    before = measured()
    for _ in range(60):
        optimizer.zero_grad()
        value = loss_on_batch(model, seqs, loss, 8, CPU)
        assert torch.isfinite(value)
        value.backward()
        optimizer.step()
    after = measured()
    assert after < 0.85 * before, f"{name}/{loss}: loss {before:.4f} -> {after:.4f}"


def test_sasrec_shortcut_keeps_attention_dropout_in_training(monkeypatch):
    """Prefix samples train through ``hidden_last``: its last block must drop attention as ``forward`` does."""
    import p2rec.models.sasrec as sasrec_module

    seen = []
    real = sasrec_module.F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dropout_p", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(sasrec_module.F, "scaled_dot_product_attention", spy)
    model = _model("sasrec", dropout=0.3)
    seqs = _random_items((2, 6), seed=2)
    model.train().hidden_last(seqs)
    assert seen == [0.3] * len(model.blocks)
    seen.clear()
    model.eval().hidden_last(seqs)
    assert seen == [0.0] * len(model.blocks)


def test_prefix_samples_are_every_training_pair_ending_with_its_target():
    train = [np.array([5, 6, 7, 8, 9]), np.array([3]), np.array([1, 2])]
    samples = training_prefixes(train, max_len=2)
    assert [s.tolist() for s in samples] == [[5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9], [1, 2]]
    # as many samples as the one-pass trainer has (input -> next item) pairs
    assert len(samples) == sum(len(s) - 1 for s in training_pairs(train, max_len=10))


@pytest.mark.parametrize("name", NAMES)
def test_one_pass_trains_each_pair_once_whatever_the_batch_padding(name):
    """A user's (input -> next item) pairs are the same alone or beside a longer user: the left padding a
    longer user brings must not add an (empty input -> first item) pair."""
    model = _model(name)
    user = np.array([3, 1, 4, 1, 5])
    longer = np.arange(1, 10) % NUM_ITEMS + 1
    _, alone = batch_hidden(model, [user], CPU)
    _, beside = batch_hidden(model, [user, longer], CPU)
    assert alone.tolist() == [1, 4, 1, 5]
    assert beside.tolist() == [1, 4, 1, 5] + longer[1:].tolist()


def test_several_targets_pair_each_position_with_its_next_items_in_both_regimes():
    """``train.targets: 3`` (Caser's T): position t is trained toward items t+1..t+3 of the user's training
    items, never past the last one, and one pass and prefix samples train the same pairs."""
    user = np.array([3, 1, 4, 1, 5])
    assert [p.tolist() for p in training_pairs([user], max_len=10, targets=3)] == [[3, 1, 4, 1, 5, 0, 0]]
    assert [p.tolist() for p in training_prefixes([user], max_len=2, targets=3)] == \
        [[3, 1, 4, 1], [3, 1, 4, 1, 5], [1, 4, 1, 5, 0], [4, 1, 5, 0, 0]]
    model = _perturbed("gru4rec")
    with torch.no_grad():
        states = model(torch.from_numpy(user[None, :-1]))[0]
        h, y = batch_hidden(model, training_pairs([user], 10, targets=3), CPU, targets=3)
    assert y.tolist() == [1, 4, 1, 4, 1, 5, 1, 5, 5]
    rows = [0, 0, 0, 1, 1, 1, 2, 2, 3]  # the input position each pair belongs to
    assert torch.allclose(h, states[rows], atol=1e-6)
    # with users of other lengths in the batch, and as prefix samples: the same loss (GRU4Rec, no dropout)
    seqs = [np.asarray(s)[:n] for s, n in zip(_random_items((3, 9), seed=4).tolist(), (9, 4, 2))]
    with torch.no_grad():
        one_pass = loss_on_batch(model, training_pairs(seqs, 10, targets=3), "ce", 0, CPU, targets=3)
        by_prefix = loss_on_batch(model, training_prefixes(seqs, 10, targets=3), "ce", 0, CPU, last_only=True,
                                  targets=3)
        single = loss_on_batch(model, training_pairs(seqs, 10), "ce", 0, CPU)
    assert torch.allclose(one_pass, by_prefix, atol=1e-5)
    assert not torch.allclose(one_pass, single, atol=1e-3)


@pytest.mark.parametrize("name,positions,same", [("gru4rec", None, True), ("sasrec", "from_start", True),
                                                  ("sasrec", "from_end", False)])
def test_prefix_samples_give_the_one_pass_loss_where_states_depend_on_the_prefix_only(name, positions, same):
    """Without dropout, the loss over a user's prefixes (loss at each one's end) equals the one-pass loss over
    every position for backbones whose state at t sees the prefix only (GRU4Rec; SASRec counting positions
    from the start); counted from the end the two regimes train different things."""
    model = _perturbed(name, **({"positions": positions} if positions else {}))
    # users of different lengths, so the one-pass batch carries left padding
    seqs = [np.asarray(s)[:n] for s, n in zip(_random_items((3, 9), seed=4).tolist(), (9, 4, 2))]
    with torch.no_grad():
        one_pass = loss_on_batch(model, seqs, "ce", 0, CPU)
        prefixes = training_prefixes(seqs, model.max_len)
        by_prefix = loss_on_batch(model, prefixes, "ce", 0, CPU, last_only=True)
    assert len(prefixes) == 8 + 3 + 1
    assert torch.allclose(one_pass, by_prefix, atol=1e-5) == same, (one_pass.item(), by_prefix.item())


@pytest.mark.parametrize("name", NAMES)
def test_one_epoch_through_the_trainer_from_config(name, tmp_path):
    from p2rec.training.runner import run_training

    rng = np.random.default_rng(2)
    lines = [f"{u} " + " ".join(map(str, rng.choice(np.arange(1, 31), size=rng.integers(4, 9), replace=False)))
             for u in range(1, 25)]
    data = tmp_path / "sequences.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for samples in ("sequences", "prefixes"):
        config = _config(name, train={"epochs": 1, "hidden": 8, "max_len": 6, "device": "cpu", "batch_size": 8,
                                      **({"samples": samples} if samples == "prefixes" else {})})
        settings = json.loads(json.dumps(train_settings(config, "tiny", name)))  # as the rule passes it
        out = tmp_path / samples
        metrics = run_training(data, settings, seed=1, out_dir=out, progress=False)
        assert metrics["status"] == "ok" and metrics["epochs"] == 1
        assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
        assert (out / "ranks.csv.gz").exists()
        # one sample per user, or one per (prefix -> next item) pair: 24 users of 4-8 items, 2 held out
        timing = json.loads((out / "timing.json").read_text())
        assert timing["training_sequences"] == (24 if samples == "sequences" else sum(len(x.split()) - 4 for x in lines))


# ---------------------------------------------------------------- the bench commands (no RecBole needed)

def _parse(*argv):
    """``p2rec bench ...`` parsed and checked as the CLI does (a usage error exits)."""
    from p2rec.cli import build_parser

    return build_parser().parse_args(["bench", *map(str, argv)])


def _bench(*argv):
    """``p2rec bench ...`` run in this process; returns the command's result (its rows, most often)."""
    from p2rec.bench.commands import invoke

    return invoke(_parse(*argv))


@pytest.fixture
def tiny_data(tmp_path):
    return write_sequence_file(tmp_path / "data" / "sequences.txt", users=20, items=25)


def test_bench_backbones_writes_one_row_per_backbone(tiny_data, tmp_path):
    out = tmp_path / "bench" / "tiny"
    rows = _bench("backbones", "--data", tiny_data, "--max-len", "6", "--repeat", "2", "--hidden", "8",
                  "--batch-size", "8", "--out", out)
    assert [r["backbone"] for r in rows] == NAMES
    assert all(r["sec_per_epoch"] > 0 and r["users_per_sec"] > 0 and r["users"] == 20 for r in rows)
    header = (tmp_path / "bench" / "tiny.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",")[:6] == ["backbone", "parameters", "sec_per_epoch", "valid_eval_sec", "test_eval_sec",
                                     "users_per_sec"]
    assert "| sasrec |" in (tmp_path / "bench" / "tiny.md").read_text(encoding="utf-8")
    # the reference evaluation path (full forward, padded batches) ranks every user exactly as the fast one
    rows = _bench("backbones", "--data", tiny_data, "--max-len", "6", "--repeat", "1", "--hidden", "8",
                  "--batch-size", "8", "--eval-batch-size", "3", "--compare-generic", "--out", out)
    assert all(r["rank_agreement"] == 1.0 and r["generic_test_eval_sec"] > 0 for r in rows)
    # --epochs-to-time 0: the evaluation alone, the training column left empty
    rows = _bench("backbones", "--data", tiny_data, "--max-len", "6", "--repeat", "1", "--hidden", "8",
                  "--epochs-to-time", "0", "--out", out)
    assert all(r["sec_per_epoch"] == "" and r["test_eval_sec"] > 0 for r in rows)
    assert "training not timed" in (tmp_path / "bench" / "tiny.md").read_text(encoding="utf-8")
    # two precisions: one row per backbone and precision, and the bf16 speed-up per backbone
    rows = _bench("backbones", "--data", tiny_data, "--max-len", "6", "--repeat", "1", "--hidden", "8",
                  "--batch-size", "8", "--backbones", "sasrec", "gru4rec", "--precisions", "fp32", "bf16",
                  "--out", out)
    assert [(r["backbone"], r["precision"]) for r in rows] == [("sasrec", "fp32"), ("sasrec", "bf16"),
                                                               ("gru4rec", "fp32"), ("gru4rec", "bf16")]
    assert "precision" in (tmp_path / "bench" / "tiny.csv").read_text(encoding="utf-8").splitlines()[0]
    md = (tmp_path / "bench" / "tiny.md").read_text(encoding="utf-8")
    assert "Training speed-up over fp32" in md and md.count("x |") == 2
    # options checked against the registry once the command is named: usage errors, as argparse gives them
    for option, value in (("--backbones", "bert4rec"), ("--precisions", "fp16")):
        with pytest.raises(SystemExit):
            _parse("backbones", "--data", tiny_data, "--out", out, option, value)


def test_bench_eval_batch_times_each_batch_size_with_identical_ranks(tiny_data, tmp_path):
    out = tmp_path / "eval"
    rows = _bench("eval-batch", "--data", tiny_data, "--max-len", "6", "--hidden", "8", "--repeat", "2",
                  "--batch-sizes", "16", "3", "--out", out)
    assert [(r["backbone"], r["eval_batch_size"]) for r in rows] == [(n, b) for n in NAMES for b in (16, 3)]
    assert all(r["test_eval_sec"] > 0 and r["users"] == 20 for r in rows)
    assert all(r["speedup"] == 1.0 for r in rows if r["eval_batch_size"] == 16)
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "ranks identical at every batch size" in md and "Command: `python -m p2rec bench eval-batch --data" in md


def test_recbole_atomic_files_keep_p2rec_order_and_split(tiny_data, tmp_path):
    from p2rec.bench import recbole_compare as bench

    inter, expected = bench.write_atomic_files(tiny_data, tmp_path / "work", "tiny")
    rows = [line.split("\t") for line in inter.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    clock = [float(r[2]) for r in rows[1:]]
    assert clock == sorted(clock) and len(set(clock)) == len(clock)  # one global order, no ties
    first_user = tiny_data.read_text(encoding="utf-8").splitlines()[0].split()
    assert [r[1] for r in rows[1:] if r[0] == first_user[0]] == first_user[1:]
    split = json.loads(expected.read_text(encoding="utf-8"))[first_user[0]]
    assert split["test_target"] == int(first_user[-1]) and split["valid_target"] == int(first_user[-2])
    assert split["valid_input"] == [int(i) for i in first_user[1:-2]]
    args = _parse("recbole", "--data", tiny_data, "--patience", "10")
    config = bench.recbole_config(args, tmp_path / "work", "gru4rec")
    assert config["stopping_step"] == 9  # RecBole stops after stopping_step + 1 bad epochs
    assert config["loss_type"] == "CE" and config["MAX_ITEM_LIST_LENGTH"] == 50
    assert config["hidden_size"] == config["embedding_size"] == 64
    # one negative: RecBole's BPR with one uniform negative against p2rec's bce; Caser over its own window
    args = _parse("recbole", "--data", tiny_data, "--loss", "one-negative", "--models", "caser")
    config = bench.recbole_config(args, tmp_path / "work", "caser")
    assert config["loss_type"] == "BPR" and config["train_neg_sample_args"] == {"distribution": "uniform", "sample_num": 1}
    assert config["MAX_ITEM_LIST_LENGTH"] == bench.CASER_WINDOW and config["embedding_size"] == 64
    assert bench.LOSSES["one-negative"][1] == "bce"
    with pytest.raises(SystemExit):  # bf16 is a cross-entropy option: refused before RecBole runs
        _parse("recbole", "--data", tiny_data, "--loss", "one-negative", "--precisions", "fp32", "bf16")


def test_recbole_bench_runs_ours_per_precision_first_and_keeps_them_if_recbole_fails(tiny_data, tmp_path, monkeypatch):
    from p2rec.bench import recbole_compare as bench

    monkeypatch.setattr(bench, "ensure_venv", lambda venv, python=None: Path("unused"))
    calls = []

    def failing_recbole(py, args, work, name, model, expected):
        calls.append(("recbole", model))
        raise P2RecError("RecBole stopped")

    monkeypatch.setattr(bench, "run_recbole", failing_recbole)
    argv = ["--data", str(tiny_data), "--models", "gru4rec", "--precisions", "fp32", "bf16", "--max-epochs", "1",
            "--max-len", "6", "--hidden", "8", "--batch-size", "8", "--threads", "1",
            "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]
    with pytest.raises(P2RecError, match="RecBole stopped"):
        _bench("recbole", *argv)
    assert calls == [("recbole", "gru4rec")]  # after both of ours
    with open(tmp_path / "out" / "recbole.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:7] == ["library", "model", "sec_per_epoch", "eval_sec", "epochs", "best_epoch", "hr@10"]
    assert [(r["library"], r["precision"]) for r in rows] == [("p2rec", "fp32"), ("p2rec", "bf16")]
    # ours is also tested with seen items masked; masking never lowers a score
    assert all(float(r["ndcg@10_masked"]) >= float(r["ndcg@10"]) for r in rows)

    def fake_recbole(py, args, work, name, model, expected):
        return {"sec_per_epoch": 10.0, "eval_sec": 1.0, "test_eval_sec": 1.0, "epochs": 3, "best_epoch": 2,
                "test": {"hit@10": 0.1, "ndcg@10": 0.05}, "test_masked": {"hit@10": 0.2, "ndcg@10": 0.07},
                "training_samples": 40, "torch": "x", "torch_threads": 1}

    monkeypatch.setattr(bench, "run_recbole", fake_recbole)
    _bench("recbole", *argv)
    md = (tmp_path / "out" / "recbole.md").read_text(encoding="utf-8")
    assert "| gru4rec | fp32 |" in md and "| gru4rec | bf16 |" in md and "| recbole | gru4rec |" in md
    assert "| fp32 | prefixes | 0.2 | 0.07 |" in md  # RecBole's row (it trains on prefixes) with its masked test
    # --p2rec-only: RecBole neither installed nor run; --model-override reaches our backbone and the report
    monkeypatch.setattr(bench, "ensure_venv", lambda venv, python=None: pytest.fail("venv built for --p2rec-only"))
    calls.clear()
    monkeypatch.setattr(bench, "run_recbole", failing_recbole)
    rows = _bench("recbole", *argv, "--p2rec-only", "--model-override", '{"dropout": 0.45}')
    assert calls == [] and [r["library"] for r in rows] == ["p2rec", "p2rec"]
    md = (tmp_path / "out" / "recbole.md").read_text(encoding="utf-8")
    assert '"dropout": 0.45' in md and "overridden by --model-override" in md
    # the recorded command is the one that ran (not the test runner's), quoted so it pastes back into a shell
    assert "Command: `python -m p2rec bench recbole --data " in md
    assert """--model-override '{"dropout": 0.45}'""" in md


def test_recbole_bench_reuses_stored_recbole_results_and_refuses_bad_ones(tiny_data, tmp_path, monkeypatch):
    from p2rec.bench import recbole_compare as bench

    monkeypatch.setattr(bench, "ensure_venv", lambda venv, python=None: pytest.fail("venv built for stored results"))
    monkeypatch.setattr(bench, "run_recbole", lambda *a: pytest.fail("RecBole retrained despite a stored result"))
    clean = {"rows": 20, "missing_users": 0, "target_mismatch": 0, "input_mismatch": 0}
    result = {"model": "GRU4Rec", "sec_per_epoch": 30.0, "eval_sec": 2.0, "test_eval_sec": 2.0, "epochs": 9,
              "best_epoch": 4, "test": {"hit@10": 0.1, "ndcg@10": 0.05}, "training_samples": 40, "torch": "x",
              "torch_threads": 1, "split_check": {"valid": clean, "test": clean},
              "resumed": {"epochs_done": 5}, "epochs_timed": 4}
    stored = tmp_path / "result.json"
    stored.write_text(json.dumps(result), encoding="utf-8")
    argv = ["--data", str(tiny_data), "--models", "gru4rec", "--max-epochs", "1", "--max-len", "6", "--hidden", "8",
            "--batch-size", "8", "--threads", "1", "--samples", "sequences", "prefixes",
            "--out-dir", str(tmp_path / "out")]
    rows = _bench("recbole", *argv, "--recbole-results", stored)
    assert [(r["library"], r["samples"]) for r in rows] == [("p2rec", "sequences"), ("p2rec", "prefixes"),
                                                            ("recbole", "prefixes")]
    assert (rows[2]["sec_per_epoch"], rows[2]["epochs"]) == (30.0, 9)
    # one sample per user, or more: prefix samples reached our trainer
    assert rows[0]["training_samples"] == 20 < rows[1]["training_samples"]
    md = (tmp_path / "out" / "recbole.md").read_text(encoding="utf-8")
    assert f"not trained by this command; its row is `{stored}`" in md and "resumed after epoch 5" in md
    assert "| gru4rec | fp32 | prefixes | " in md and "| gru4rec | fp32 | sequences | " in md  # both in the ratios
    # a file whose split differs, or that is not a worker result, fails before any training, naming the file
    for broken, match in (({**result, "split_check": {"test": {**clean, "target_mismatch": 3}}}, "split differs"),
                          ({"model": "GRU4Rec"}, "has no 'sec_per_epoch'"), ({**result, "model": "BERT4Rec"}, "'BERT4Rec' is none of")):
        stored.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(P2RecError, match=match) as err:
            _bench("recbole", *argv, "--recbole-results", stored)
        assert str(stored) in str(err.value)


def test_recbole_masked_ranks_mask_history_and_padding_but_never_the_target():
    from p2rec.bench import recbole_worker as worker

    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0],    # padding 0 and history {1} above the target 3
                           [0.0, 1.0, 7.0, 7.0, 6.0],    # target 2 ties with item 3, which is history
                           [0.0, 7.0, 7.0, 1.0, 1.0]])   # target 2 ties with item 1, which is not
    ranks = worker.masked_ranks(scores, [3, 2, 2], [[1, 3], [3, 2], [4]])  # a target in its own history stays
    assert ranks.tolist() == [1, 0, 1]  # row 0: item 2 above; row 1: nothing; row 2: the tie counts against it
    assert scores[0, 0] == 9.0  # the caller's scores are untouched


def test_recbole_best_epoch_follows_its_early_stopping_rule():
    from p2rec.bench import recbole_worker as worker

    assert worker._best_epoch([0.1, 0.3, 0.2, 0.3, 0.25]) == 4  # RecBole keeps ties (>=)
    assert worker._best_epoch([0.5]) == 1
    # resumed after 43 epochs whose best scored 0.052: a later epoch must reach it to take its place
    resumed = {"epochs_done": 43, "best_valid_ndcg@10": 0.052}
    assert worker._best_epoch_after_resume([0.051, 0.050], resumed) == 43
    assert worker._best_epoch_after_resume([0.051, 0.052, 0.050], resumed) == 45
    assert worker._best_epoch_after_resume([0.3, 0.2], None) == 1


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_cross_entropy_matches_plain_cross_entropy(chunk):
    from p2rec.models.losses import ce_chunk_rows, chunked_softmax_ce

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    table = torch.randn(13, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 13, (50,), generator=gen)
    ours = chunked_softmax_ce(hidden, table, targets, chunk)
    g_hidden, g_table = torch.autograd.grad(ours, (hidden, table))
    logits = hidden @ table.T
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)  # padding is no class
    plain = torch.nn.functional.cross_entropy(logits, targets)
    p_hidden, p_table = torch.autograd.grad(plain, (hidden, table))
    assert torch.allclose(ours, plain) and torch.allclose(g_hidden, p_hidden) and torch.allclose(g_table, p_table)
    # the device-dependent default: small chunks on a CPU, chunks of about 2^24 logits on a GPU
    assert ce_chunk_rows(3417, "cpu") == 64 and ce_chunk_rows(3417, "cuda") == (1 << 24) // 3417
    assert ce_chunk_rows(10 ** 9, "cuda") == 64


def test_cross_entropy_survives_an_underflowing_target_and_runs_without_gradients():
    from p2rec.models.losses import chunked_softmax_ce

    # row 0's target is ~200 logits below the best class: its probability underflows to 0 in float32, so
    # its log-sum-exp is computed in full instead of from the target's probability
    hidden = torch.tensor([[1.0, 0.0], [0.3, -0.2], [0.0, 1.0]], requires_grad=True)
    table = torch.tensor([[0.0, 0.0], [200.0, 0.0], [0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    targets = torch.tensor([2, 3, 1])
    logits = hidden @ table.T
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)
    assert torch.softmax(logits, 1)[0, 2].item() == 0.0  # the case under test
    plain = torch.nn.functional.cross_entropy(logits, targets)
    plain_grads = torch.autograd.grad(plain, (hidden, table))
    for chunk in (1, 2, 64):
        ours = chunked_softmax_ce(hidden, table, targets, chunk)
        assert torch.isfinite(ours) and torch.allclose(ours, plain)
        assert all(torch.allclose(a, b) for a, b in zip(torch.autograd.grad(ours, (hidden, table)), plain_grads))
    with torch.no_grad():  # no gradient wanted: the same loss, no gradient work
        assert torch.allclose(chunked_softmax_ce(hidden, table, targets, 2), plain.detach())


def test_optimizer_is_adam_fused_on_cpu():
    from p2rec.training.trainer import make_optimizer

    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, 1e-3, 0.0, torch.device("cpu"))
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True
    # and it trains: one step moves the weights against the gradient
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert torch.all((model.weight.detach() - before) * model.weight.grad < 0)


def test_cross_entropy_benchmark_times_three_agreeing_ways(tmp_path, monkeypatch, capsys):
    from p2rec.bench import cross_entropy as bench
    from p2rec.cli import main as cli

    argv = ["bench", "cross-entropy", "--items", "40", "--rows", "30", "--hidden", "8", "--precisions", "fp32",
            "--repeat", "1"]
    assert cli([*argv, "--out", str(tmp_path / "ce")]) == 0
    (row,) = list(csv.DictReader(open(tmp_path / "ce.csv")))
    assert all(float(row[f"{way}_ms"]) > 0 for way in ("autograd", "recompute", "fused"))
    assert float(row["max_rel_grad_diff"]) < 1e-5  # the three compute the same gradients
    assert "Command: `python -m p2rec bench cross-entropy --items 40" in (tmp_path / "ce.md").read_text()
    # a way whose gradients differ makes the benchmark fail instead of timing it: one line, exit 2
    fused = bench.WAYS["fused"]
    monkeypatch.setitem(bench.WAYS, "fused", lambda h, t, y, p: 2 * fused(h, t, y, p))
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2rec bench: error: ") and "gradients of the three ways differ" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("samples", ["sequences", "prefixes"])
def test_epoch_profile_splits_an_epoch_into_parts(tiny_data, capsys, samples):
    _bench("profile-epoch", "--data", tiny_data, "--backbone", "gru4rec", "--samples", samples, "--batches", "1",
           "--batch-size", "4", "--hidden", "8", "--max-len", "6")
    row = dict(kv.split("=") for kv in capsys.readouterr().out.splitlines()[0].split())
    parts = ["encoder_forward_s", "ce_forward_s", "backward_s", "optimizer_s"]
    assert row["samples"] == samples and all(float(row[k]) >= 0 for k in parts + ["ce_alone_s"])
    assert abs(sum(float(row[k]) for k in parts) - float(row["epoch_s"])) < 0.05
    with pytest.raises(P2RecError, match="--batches"):
        _bench("profile-epoch", "--data", tiny_data, "--batches", "0")


def test_bf16_cross_entropy_stays_close_to_full_precision():
    from p2rec.models.losses import chunked_softmax_ce

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(300, 32, generator=gen, requires_grad=True)
    table = (0.3 * torch.randn(500, 32, generator=gen)).requires_grad_()
    targets = torch.randint(1, 500, (300,), generator=gen)
    values, grads = {}, {}
    for precision in ("fp32", "bf16"):
        values[precision] = chunked_softmax_ce(hidden, table, targets, 64, precision=precision)
        grads[precision] = torch.autograd.grad(values[precision], (hidden, table))
        assert all(g.dtype == torch.float32 for g in grads[precision])  # accumulated at full precision
    assert abs(values["bf16"].item() - values["fp32"].item()) < 1e-2 * values["fp32"].item()
    for full, half in zip(grads["fp32"], grads["bf16"]):
        error = ((full - half).norm() / full.norm()).item()
        assert 1e-6 < error < 0.02, error  # rounded (so bf16 really ran), yet close
    with pytest.raises(ValueError, match="precision"):
        chunked_softmax_ce(hidden, table, targets, 64, precision="fp16")


def test_precision_is_checked_against_the_loss_and_the_schema(tmp_path):
    from p2rec.training.runner import run_training

    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"{u} 1 2 3 4 5\n" for u in range(1, 6)), encoding="utf-8")
    config = _config("sasrec", train={"epochs": 1, "hidden": 8, "max_len": 6, "device": "cpu", "loss": "bce",
                                      "precision": "bf16"})
    settings = json.loads(json.dumps(train_settings(config, "tiny", "sasrec")))
    with pytest.raises(P2RecError, match="train.precision.*loss 'ce' only"):
        run_training(data, settings, seed=1, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(P2RecError, match="train.precision"):
        _config("sasrec", train={"precision": "fp16"})


def test_reproduction_table_pools_gpu_models_but_never_cpu_with_gpu(tmp_path):
    def run(loss, seed, gpu, hr):
        d = tmp_path / loss / "beauty" / "gru4rec" / "none" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"seed": seed, "epochs": 10, "test": {"hr@10": hr, "ndcg@10": hr / 2}}))
        (d / "timing.json").write_text(json.dumps({"gpu": gpu, "machine": "x86_64", "torch_threads": 1}))

    run("bce", 1, "NVIDIA H200", 0.02)
    run("bce", 2, "NVIDIA H100 80GB HBM3", 0.04)
    run("bce", 3, None, 0.5)  # a CPU seed: its own row
    published = tmp_path / "published.csv"
    published.write_text("dataset,backbone,loss,hr@10,ndcg@10,source\nbeauty,gru4rec,bce,0.03,0.015,test\n")
    out = tmp_path / "table"
    _bench("reproduction-table", "--runs", f"bce={tmp_path / 'bce'}", "--published", published, "--out", out)
    import pandas as pd

    rows = pd.read_csv(out.with_suffix(".csv")).set_index("device")
    assert rows.loc["gpu", "seeds"] == 2 and rows.loc["gpu", "hr@10"] == pytest.approx(0.03)
    assert rows.loc["gpu", "machines"] == "NVIDIA H100 80GB HBM3 x1, NVIDIA H200 x1"
    assert rows.loc["cpu", "seeds"] == 1 and rows.loc["cpu", "hr@10"] == pytest.approx(0.5)
    assert rows.loc["gpu", "ratio_hr@10"] == pytest.approx(1.0)
    # the same GPU seed in a second folder (a run made twice) counts once: the folder given first wins
    again = tmp_path / "again" / "beauty" / "gru4rec" / "none" / "seed1"
    again.mkdir(parents=True)
    (again / "metrics.json").write_text(json.dumps({"seed": 1, "epochs": 10, "test": {"hr@10": 0.9, "ndcg@10": 0.4}}))
    (again / "timing.json").write_text(json.dumps({"gpu": "NVIDIA H200", "machine": "x86_64"}))
    twice = ("reproduction-table", "--runs", f"bce={tmp_path / 'bce'}", "--runs", f"bce={tmp_path / 'again'}",
             "--published", published, "--out", out)
    _bench(*twice)
    rows = pd.read_csv(out.with_suffix(".csv")).set_index("device")
    assert rows.loc["gpu", "seeds"] == 2 and rows.loc["gpu", "hr@10"] == pytest.approx(0.03)
    # runs trained on prefix samples (their config.json says so) are a cell of their own
    (again / "config.json").write_text(json.dumps({"train": {"samples": "prefixes", "loss": "bce"}}))
    _bench(*twice)
    rows = pd.read_csv(out.with_suffix(".csv")).set_index(["device", "samples"])
    assert rows.loc[("gpu", "sequences"), "seeds"] == 2 and rows.loc[("gpu", "prefixes"), "seeds"] == 1
    assert rows.loc[("gpu", "prefixes"), "hr@10"] == pytest.approx(0.9)
    # and runs with several targets per position (train.targets) form one more
    (again / "config.json").write_text(json.dumps({"train": {"samples": "prefixes", "targets": 3}}))
    _bench(*twice)
    rows = pd.read_csv(out.with_suffix(".csv")).set_index(["device", "samples", "targets"])
    assert rows.loc[("gpu", "sequences", 1), "seeds"] == 2 and rows.loc[("gpu", "prefixes", 3), "seeds"] == 1
    header = out.with_suffix(".csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["dataset", "backbone", "loss", "samples", "targets", "device", "seeds"]


def test_compare_runs_tests_two_sets_of_runs_user_by_user(tmp_path):
    from p2rec.io import write_ranks

    rng = np.random.default_rng(0)
    users = np.arange(1, 201)
    for name, shift in (("a", 0), ("b", 3)):  # b ranks every target 3 places lower: clearly worse
        for seed in (1, 2):
            run = tmp_path / name / f"seed{seed}"
            run.mkdir(parents=True)
            ranks = rng.integers(0, 8, len(users)) + shift
            write_ranks(run / "ranks.csv.gz", users, ranks)
            ndcg = float(np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0)))
            (run / "metrics.json").write_text(json.dumps({"status": "ok", "best_epoch": seed,
                                                          "test": {"ndcg@10": ndcg}}), encoding="utf-8")
    rows = _bench("compare-runs", "--treatment", tmp_path / "a", "--comparator", tmp_path / "b", "--seeds", "1", "2",
                  "--metrics", "ndcg@10", "--out", tmp_path / "out" / "cmp")
    (row,) = rows
    assert row["n_users"] == 200 and row["n_seeds"] == 2 and float(row["p_users"]) < 1e-6
    assert row["treatment"] > row["comparator"] and row["effect"].startswith("+")
    assert "| ndcg@10 |" in (tmp_path / "out" / "cmp.md").read_text(encoding="utf-8")
    with pytest.raises(P2RecError, match=r"seed3.*metrics.json: missing"):
        _bench("compare-runs", "--treatment", tmp_path / "a", "--comparator", tmp_path / "b", "--seeds", "3",
               "--out", tmp_path / "out" / "cmp")


def test_seen_item_scores_counts_seen_items_above_the_target(tiny_data, tmp_path):
    from p2rec.bench.seen_items import seen_item_stats


    class LastItemFirst(torch.nn.Module):  # scores every seen item 1, the last one 2, all others 0
        def score_last(self, seqs):
            scores = torch.zeros(len(seqs), 10)
            for row, seq in enumerate(seqs):
                scores[row, seq[seq > 0]] = 1.0
                scores[row, seq[-1]] = 2.0
            return scores

    inputs = [np.array([1, 2, 3]), np.array([4, 5])]
    stats = seen_item_stats(LastItemFirst(), inputs, np.array([6, 4]), max_len=5)
    # user 1: target 6 scores 0, its three seen items score above it; user 2: the target 4 is itself seen
    # (score 1), only the last item 5 (score 2) is above it
    assert stats == {"users": 2, "mean_seen_above_target": 2.0, "share_any_seen_above_target": 1.0,
                     "share_last_seen_above_target": 1.0}
    rows = _bench("seen-item-scores", "--data", tiny_data, "--models", "sasrec", "--max-epochs", "1", "--max-len", "6",
                  "--hidden", "8", "--batch-size", "8", "--threads", "1", "--out-dir", tmp_path / "out")
    (row,) = rows
    assert row["users"] == 20 and 0 <= row["share_any_seen_above_target"] <= 1
    assert row["ndcg@10_masked"] >= row["ndcg@10"]  # masking never lowers a rank
    assert "| sasrec | fp32 |" in (tmp_path / "out" / "seen_items.md").read_text(encoding="utf-8")
