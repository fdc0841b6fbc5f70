"""The standard one-line-per-user sequence format: ``user_id item_id item_id ...`` (chronological, ids >= 1)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p2rec import P2RecError

MIN_SPLIT_LENGTH = 3  # one training item, one validation target, one test target


@dataclass
class SequenceData:
    users: np.ndarray  # int64 user ids, in file order
    sequences: list[np.ndarray]  # chronological item ids per user (int64, >= 1)
    num_items: int  # largest item id; 0 is the padding id
    dropped_users: list[int] = field(default_factory=list)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def read_sequences(path: str | Path, short_users: str = "drop") -> SequenceData:
    """Read and validate a sequence file; errors name the file and line.

    Users with fewer than 3 items cannot be split leave-one-out: ``short_users='drop'`` removes them
    (returned in ``dropped_users`` and counted in stats.json), ``'error'`` fails naming the line.
    """
    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: data file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise P2RecError(f"{path}:{line_no}: not valid UTF-8 text (byte {err.start}); expected integer ids") from None
    users: list[int] = []
    sequences: list[np.ndarray] = []
    dropped: list[int] = []
    seen: dict[int, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            ids = [int(tok) for tok in fields]
        except ValueError:
            bad = next(tok for tok in fields if not _is_int(tok))
            raise P2RecError(f"{path}:{line_no}: '{bad}' is not an integer id (line: {line[:80]!r})") from None
        user, items = ids[0], ids[1:]
        if user < 0:
            raise P2RecError(f"{path}:{line_no}: negative user id {user}")
        if any(i < 1 for i in items):
            bad = next(i for i in items if i < 1)
            raise P2RecError(f"{path}:{line_no}: item id {bad} is not >= 1 (0 is reserved for padding)")
        if user in seen:
            raise P2RecError(f"{path}:{line_no}: duplicate user {user} (first on line {seen[user]})")
        seen[user] = line_no
        if len(items) < MIN_SPLIT_LENGTH:
            if short_users == "error":
                raise P2RecError(
                    f"{path}:{line_no}: user {user} has {len(items)} item(s); leave-one-out needs at least "
                    f"{MIN_SPLIT_LENGTH} (set short_users: drop to skip such users)"
                )
            dropped.append(user)
            continue
        users.append(user)
        sequences.append(np.asarray(items, dtype=np.int64))
    if not sequences:
        raise P2RecError(f"{path}: no user sequences (empty file or all users shorter than {MIN_SPLIT_LENGTH})")
    num_items = int(max(int(s.max()) for s in sequences))
    return SequenceData(np.asarray(users, dtype=np.int64), sequences, num_items, dropped)


def _is_int(tok: str) -> bool:
    try:
        int(tok)
        return True
    except ValueError:
        return False


def format_sequences(users, sequences) -> str:
    return "".join(f"{u} " + " ".join(map(str, s)) + "\n" for u, s in zip(users, sequences))


def sequence_stats(data: SequenceData) -> dict:
    lengths = np.array([len(s) for s in data.sequences])
    return {
        "users": int(len(data.users)),
        "items": int(data.num_items),
        "items_seen": int(len(np.unique(np.concatenate(data.sequences)))),
        "interactions": data.num_interactions,
        "length": {
            "mean": round(float(lengths.mean()), 4),
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)),
            "max": int(lengths.max()),
        },
        "dropped_short_users": len(data.dropped_users),
    }
