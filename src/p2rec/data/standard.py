"""A dataset's own standard-form file (``user_id item_id item_id ...``) as the prepare stage reads it.

Files from outside the suite come from spreadsheets and scripts, so this reader accepts what they commonly
hold and refuses the rest naming the file and line (docs/data.md, "What the reader accepts"):

- accepted: a UTF-8 byte-order mark at the start, CRLF or CR line ends, tabs and spaces in any mix, blank
  lines anywhere (still counted in line numbers), no final newline;
- refused: a directory or unreadable file, text that is not UTF-8, a token that is not an integer, an id
  beyond 64 bits, a negative user id, an item id below 1, a user listed twice; users with fewer than 3
  items are dropped or refused (``short_users``).

Item ids that are not exactly 1..N are renumbered by ``dense_items``. The prepared ``sequences.txt`` is
read back by ``p2rec.data.sequences.read_sequences``, which the training and LLM stages share; this reader
is separate so that its leniency stays with the inputs and those stages' code versions do not move.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.data.sequences import MIN_SPLIT_LENGTH, SequenceData

#: ids are stored as int64: a larger one is an error naming its line, never an overflow
MAX_ID = 2**63 - 1
BOM = "\ufeff"  # a UTF-8 byte-order mark, written by some spreadsheet exports


def read_standard_file(path: str | Path, short_users: str = "drop") -> SequenceData:
    """Read and validate a standard-form input file; errors name the file and line. Item ids are as in the
    file (any int64 >= 1); ``num_items`` is the largest."""
    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: data file not found")
    if not path.is_file():  # a directory, or a fifo or device that reading would block on
        raise P2RecError(f"{path}: {'is a directory' if path.is_dir() else 'is not a regular file'}, not a data file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise P2RecError(f"{path}: cannot read the data file ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise P2RecError(f"{path}:{line_no}: not valid UTF-8 text (byte {err.start}); expected integer ids") from None
    text = text.removeprefix(BOM)  # at the start only; elsewhere it is a bad token, shown as '\ufeff...'
    users: list[int] = []
    sequences: list[np.ndarray] = []
    dropped: list[int] = []
    seen: dict[int, int] = {}
    # line ends \n, \r\n and \r only (str.splitlines would also break at form feeds and other separators,
    # and line numbers would then differ from an editor's); other white space separates ids like a space
    for line_no, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        ids = []
        for tok in fields:
            try:
                ids.append(int(tok))
            except ValueError:
                raise P2RecError(f"{path}:{line_no}: {tok!r} is not an integer id (line: {line[:80]!r})") from None
        huge = next((n for n, i in enumerate(ids) if i > MAX_ID), None)
        if huge is not None:
            raise P2RecError(f"{path}:{line_no}: {'user' if huge == 0 else 'item'} id {ids[huge]} is out of the "
                             f"supported range (ids are 64-bit: at most {MAX_ID})")
        user, items = ids[0], ids[1:]
        if user < 0:
            raise P2RecError(f"{path}:{line_no}: negative user id {user}")
        bad = next((i for i in items if i < 1), None)
        if bad is not None:
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
    return SequenceData(np.asarray(users, dtype=np.int64), sequences, int(max(int(s.max()) for s in sequences)),
                        dropped)


def dense_items(data: SequenceData) -> tuple[SequenceData, np.ndarray | None]:
    """Item ids 1..N, the size of the item table. Ids that already are exactly 1..N (every one used) are
    kept as they are; any others (gaps, ids far above the number of items) are renumbered 1..N in the order
    of first appearance (users in file order, each chronologically). Returns the data and, when renumbered,
    the raw id of each new id (``raw[new - 1]``), else None."""
    stream = np.concatenate(data.sequences)
    distinct, first, where = np.unique(stream, return_index=True, return_inverse=True)
    if len(distinct) == data.num_items:  # ids >= 1 and as many distinct as the largest: exactly 1..N
        return data, None
    order = np.argsort(first, kind="stable")  # sorted positions in order of first appearance
    new_id = np.empty(len(distinct), dtype=np.int64)
    new_id[order] = np.arange(1, len(distinct) + 1)
    ends = np.cumsum([len(s) for s in data.sequences])[:-1]
    sequences = np.split(new_id[where.reshape(-1)], ends)
    return SequenceData(data.users, sequences, len(distinct), data.dropped_users), distinct[order]
