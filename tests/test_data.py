import numpy as np
import pytest

from p2rec import P2RecError
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.data.synthetic import generate


def test_reads_standard_lines(write_lines):
    data = read_sequences(write_lines(["1 3 4 5", "2 1 2 3 4"]))
    assert data.users.tolist() == [1, 2]
    assert data.num_items == 5
    assert data.sequences[1].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1 2 3 4", "2 3 x 5"], "data.txt:2: 'x' is not an integer id"),
        (["1 2 3 4", "2 3 4.5 5"], "data.txt:2: '4.5' is not an integer id"),
        (["1 2 3 4", "2 3 0 5"], "data.txt:2: item id 0 is not >= 1"),
        (["1 2 -3 4"], "data.txt:1: item id -3"),
        (["-1 2 3 4"], "data.txt:1: negative user id -1"),
        (["1 2 3 4", "1 4 5 6"], "data.txt:2: duplicate user 1 (first on line 1)"),
        ([], "no user sequences"),
    ],
)
def test_bad_lines_name_file_and_line(write_lines, lines, message):
    with pytest.raises(P2RecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_sequences(write_lines(lines))


def test_wrong_encoding_names_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"1 2 3 4\n2 3 \xe9 5\n")
    with pytest.raises(P2RecError, match=r"latin.txt:2: not valid UTF-8"):
        read_sequences(path)


def test_missing_file(tmp_path):
    with pytest.raises(P2RecError, match="not found"):
        read_sequences(tmp_path / "nope.txt")


def test_short_users_are_dropped_or_rejected(write_lines):
    path = write_lines(["1 2 3 4", "2 5 6 8", "3 7"])
    data = read_sequences(path)
    assert data.users.tolist() == [1, 2] and data.dropped_users == [3]
    with pytest.raises(P2RecError, match=r"data.txt:3: user 3 has 1 item\(s\)"):
        read_sequences(path, short_users="error")


def test_split_keeps_validation_and_test_out_of_training(write_lines):
    data = read_sequences(write_lines(["1 1 2 3 4 5", "2 6 7 8"]))
    split = leave_one_out(data)
    assert [t.tolist() for t in split.train] == [[1, 2, 3], [6]]
    assert split.valid_target.tolist() == [4, 7]
    assert split.test_target.tolist() == [5, 8]
    assert [s.tolist() for s in split.inputs("valid")] == [[1, 2, 3], [6]]
    assert [s.tolist() for s in split.inputs("test")] == [[1, 2, 3, 4], [6, 7]]


def test_training_pairs_never_contain_held_out_items(tiny_sequences):
    from p2rec.data.sequences import SequenceData
    from p2rec.training.trainer import training_pairs

    users, seqs = tiny_sequences
    data = SequenceData(users, [np.asarray(s) for s in seqs], 30)
    split = leave_one_out(data)
    pairs = training_pairs(split.train, max_len=50)
    for seq, pair in zip([s for s in data.sequences if len(s) >= 4], pairs):
        assert seq[-1] not in pair and seq[-2] not in pair  # items are unique per synthetic user here


def test_synthetic_is_deterministic_and_five_core():
    a = generate(seed=3, users=120, items=60, categories=4)
    b = generate(seed=3, users=120, items=60, categories=4)
    assert all((x == y).all() for x, y in zip(a[1], b[1]))
    assert (a[2] == b[2]).all()
    items = np.concatenate(a[1])
    counts = np.bincount(items)[1:]
    assert counts.min() >= 5
    assert min(len(s) for s in a[1]) >= 5
    assert set(np.unique(a[2][1:])) <= set(range(4))
    c = generate(seed=4, users=120, items=60, categories=4)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a[1], c[1]))
