import math

import numpy as np
import pytest
import torch

from p2rec.evaluation import equal_length_batches, full_ranking, metrics_from_ranks, pad_left, per_user_metric, ranks_from_scores


def test_ranks_count_higher_and_ties_against_the_model():
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.5, 0.1],
                           [0.0, 0.2, 0.2, 0.2, 0.2],
                           [0.0, 1.0, 0.3, 0.2, 0.1]])
    targets = torch.tensor([1, 4, 1])
    # row 0: one higher (0.9), one other equal (item 3) -> rank 2
    # row 1: all four equal -> three others tie -> rank 3 (pessimistic)
    # row 2: best -> rank 0
    assert ranks_from_scores(scores, targets).tolist() == [2, 3, 0]


def test_metrics_from_hand_computed_ranks():
    ranks = np.array([0, 1, 4, 9, 10, 30])
    m = metrics_from_ranks(ranks, ks=[5, 10])
    assert m["hr@5"] == pytest.approx(3 / 6)
    assert m["hr@10"] == pytest.approx(4 / 6)
    ndcg10 = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert m["ndcg@10"] == pytest.approx(ndcg10)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    assert per_user_metric(ranks, "hr@5").tolist() == [1, 1, 1, 0, 0, 0]
    assert per_user_metric(ranks, "ndcg@10")[3] == pytest.approx(1 / math.log2(11))


def test_pad_left_keeps_the_last_items():
    out = pad_left([np.array([1, 2, 3, 4]), np.array([5])], max_len=3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5]]


def _fixed_scores(table):
    def score(seqs):
        return table[: len(seqs)].clone() if False else table.index_select(0, seqs[:, -1])
    return score


def test_history_masking_padding_and_target_rules():
    # 6 items; the score of item j for a sequence ending in item i is table[i, j]
    table = torch.zeros(7, 7)
    table[3] = torch.tensor([9.0, 5.0, 4.0, 8.0, 1.0, 2.0, 3.0])  # padding 0 has the top score
    inputs = [np.array([1, 3])]
    score = lambda seqs: table.index_select(0, seqs[:, -1])
    # target 2 (score 4): unmasked, higher are items 1 (5) and 3 (8) -> rank 2; padding never counted
    assert full_ranking(score, inputs, np.array([2]), 5, mask_history=False).tolist() == [2]
    # masked: history items 1 and 3 drop out -> rank 0
    assert full_ranking(score, inputs, np.array([2]), 5, mask_history=True).tolist() == [0]
    # a repeated target stays rankable under masking (target 3 is in the history)
    assert full_ranking(score, inputs, np.array([3]), 5, mask_history=True).tolist() == [0]


def test_equal_length_batches_cover_every_input_once_with_one_length_each():
    rng = np.random.default_rng(3)
    inputs = [np.arange(1, n + 1) for n in rng.integers(1, 30, size=200)]
    batches = equal_length_batches(inputs, max_len=12, batch_size=16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(200))
    for idx in batches:
        assert 0 < len(idx) <= 16 and len({min(len(inputs[i]), 12) for i in idx}) == 1
    assert equal_length_batches([], 5, 4) == []


def test_ranks_do_not_depend_on_batch_size():
    rng = np.random.default_rng(1)
    table = torch.from_numpy(rng.normal(size=(51, 51)).astype(np.float32))
    inputs = [rng.choice(np.arange(1, 51), size=rng.integers(1, 9), replace=False) for _ in range(37)]
    targets = rng.integers(1, 51, size=37)
    score = lambda seqs: table.index_select(0, seqs[:, -1])
    a = full_ranking(score, inputs, targets, 5, batch_size=4)
    b = full_ranking(score, inputs, targets, 5, batch_size=1000)
    assert a.tolist() == b.tolist()
