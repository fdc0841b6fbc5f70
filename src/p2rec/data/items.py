"""Item side information: one line of text per item, ``item_id<TAB>text`` (docs/data.md, "Item text").

The prepared file ``data/{dataset}/items.tsv`` has item ids 1..num_items of the prepared sequences;
:func:`read_items` returns a list indexed by item id ("" for the padding id 0 and for items without a
line). Errors name the file and line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from p2rec import P2RecError

BOM = "\ufeff"
#: accepted first fields of an optional header line (case-insensitive)
HEADER_FIELDS = ("item_id", "item", "id")


def read_items(path: str | Path, num_items: int, *, id_map: Mapping[int, int] | None = None,
               unknown: str = "error") -> list[str]:
    """Read and validate an items file; returns ``texts`` with ``len(texts) == num_items + 1`` and
    ``texts[i]`` the text of item ``i`` ("" at index 0 and for items the file does not list).

    The format: UTF-8, one line per item, ``item_id<TAB>text`` (everything after the first tab is the
    text; surrounding white space is stripped, inner tabs become spaces); an optional header line whose
    first field is ``item_id``; blank lines, a byte-order mark at the start and CRLF line ends are accepted.
    Refused, naming the file and line: text that is not UTF-8, a line without a tab, an id that is not an
    integer, an id outside 1..num_items, an id listed twice.

    ``id_map`` (raw id -> item id, a renumbered dataset's ``item_map.csv``) translates the file's ids first;
    an id the map lacks is an item the prepared data does not have: an error, or with ``unknown='skip'``
    (preparation from a source that lists more items than the sequences hold) skipped.
    """
    path = Path(path)
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', not {unknown!r}")
    if not path.exists():
        raise P2RecError(f"{path}: items file not found")
    if not path.is_file():
        raise P2RecError(f"{path}: {'is a directory' if path.is_dir() else 'is not a regular file'}, not an items file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise P2RecError(f"{path}: cannot read the items file ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise P2RecError(f"{path}:{line_no}: not valid UTF-8 text (byte {err.start}); items files are UTF-8") from None
    text = text.removeprefix(BOM)
    texts = [""] * (num_items + 1)
    seen: dict[int, int] = {}
    first = True
    # split on line ends only (str.splitlines would also split on form feeds and other separators in text)
    for line_no, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        head, sep, rest = line.partition("\t")
        if first and head.strip().lower() in HEADER_FIELDS:
            first = False
            continue
        first = False
        if not sep:
            raise P2RecError(f"{path}:{line_no}: expected 'item_id<TAB>text', found no tab (line: {line[:80]!r})")
        try:
            raw_id = int(head.strip())
        except ValueError:
            raise P2RecError(f"{path}:{line_no}: {head.strip()[:40]!r} is not an integer item id "
                             f"(line: {line[:80]!r})") from None
        item = raw_id
        if id_map is not None:
            if raw_id not in id_map:
                if unknown == "skip":
                    continue
                raise P2RecError(f"{path}:{line_no}: item id {raw_id} is not an item of the prepared data "
                                 f"(not in its item map)")
            item = id_map[raw_id]
        elif not 1 <= item <= num_items:
            if unknown == "skip":
                continue
            raise P2RecError(f"{path}:{line_no}: item id {item} is outside 1..{num_items} (the items of the "
                             f"prepared sequences)")
        if item in seen:
            raise P2RecError(f"{path}:{line_no}: duplicate item {raw_id} (first on line {seen[item]})")
        seen[item] = line_no
        texts[item] = clean_text(rest)
    return texts


def clean_text(text: str) -> str:
    """One line of text: white space runs (tabs, newlines) become one space, ends stripped."""
    return " ".join(text.split())


def format_items(texts: list[str]) -> str:
    """The prepared file: a header, then ``item_id<TAB>text`` for every item 1..N (empty text included)."""
    return "item_id\ttext\n" + "".join(f"{i}\t{clean_text(t)}\n" for i, t in enumerate(texts) if i > 0)


def read_item_map(path: str | Path) -> dict[int, int]:
    """``item_map.csv`` (``raw_item_id,item_id``) of a renumbered dataset as raw id -> item id."""
    path = Path(path)
    mapping: dict[int, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise P2RecError(f"{path}: cannot read the item map ({err})") from None
    for line_no, line in enumerate(lines, start=1):
        if line_no == 1 or not line.strip():
            continue
        try:
            raw, new = (int(x) for x in line.split(","))
        except ValueError:
            raise P2RecError(f"{path}:{line_no}: expected 'raw_item_id,item_id', found {line[:80]!r}") from None
        mapping[raw] = new
    return mapping
