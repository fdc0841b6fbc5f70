"""Item text for Amazon data prepared from the original review file: titles, brands and categories from the
2014 metadata file (``meta_<Category>.json.gz``), joined to the prepared item ids by ASIN.

The raw preparer (``p2rec.data.raw``) numbers items 1..N but keeps no ASIN map. This module rebuilds the map
by reading the review file the same way (the preparer's own line reader, k-core filter and numbering) and
then checks that the rebuilt sequences equal the prepared ``sequences.txt`` line for line, so a map that
could disagree with the prepared ids is never used. (Writing the map at preparation would be simpler, but
preparation's code is in every run's lineage: that change waits for the next change that reruns everything.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from p2rec import P2RecError
from p2rec.data.filtering import k_core, to_sequences
from p2rec.data.raw import (_amazon_rows, _binary_lines, _min_rating, _open_maybe_gzip, _parse_record, fetch,
                            sequence_data)
from p2rec.data.sequences import read_sequences


def amazon_item_ids(entry: dict, raw_dir: str | Path, name: str, prepared_sequences: str | Path) -> dict[str, int]:
    """``{asin: item id}`` of a dataset prepared from an ``amazon-2014`` review file, checked against the
    prepared sequences."""
    if entry.get("source") != "amazon-2014":
        raise P2RecError(f"config key 'catalog.{name}.items_from.format': 'amazon-metadata' joins by ASIN and needs "
                         f"a dataset prepared from the Amazon review file (source 'amazon-2014'), not "
                         f"'{entry.get('source')}'")
    path, _ = fetch(entry, Path(raw_dir), name)
    label = str(path)
    with _open_maybe_gzip(path) as stream:
        rows = list(_amazon_rows(_binary_lines(stream, label), label, _min_rating(entry)))
    frame = k_core(pd.DataFrame(rows, columns=["user", "item", "time"]), int(entry.get("core", 5)))
    users, sequences, _, asin_to_first = to_sequences(frame)
    data = sequence_data(users, sequences, entry.get("short_users", "drop"), name)
    # dropping short users renumbers items densely: follow each kept user's sequence to the final ids
    kept = {int(u) for u in data.users.tolist()}
    first_to_final: dict[int, int] = {}
    before = [s for u, s in zip(users.tolist(), sequences) if int(u) in kept]
    for old, new in zip(before, data.sequences):
        first_to_final.update(zip(old.tolist(), new.tolist()))
    prepared = read_sequences(prepared_sequences)
    same = (len(prepared.sequences) == len(data.sequences)
            and all(np.array_equal(a, b) for a, b in zip(prepared.sequences, data.sequences)))
    if not same:
        raise P2RecError(f"{prepared_sequences}: the review file {path} no longer gives these sequences (was the data "
                         f"prepared from another file or with other catalog.{name} settings? prepare it again)")
    return {asin: first_to_final[i] for asin, i in asin_to_first.items() if i in first_to_final}


def _text(value, field: str, label: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    raise P2RecError(f"{label}: field '{field}' has the invalid value {value!r:.80}")


def read_amazon_metadata(path: Path, wanted: set[str]) -> dict[str, dict]:
    """``{asin: {title, brand, categories}}`` for the wanted ASINs of a 2014 metadata file (python-dict
    literals or JSON, one product per line, gzip or plain). Products without a title keep their other fields."""
    out: dict[str, dict] = {}
    lines: dict[str, int] = {}
    label = str(path)
    with _open_maybe_gzip(path) as stream:
        for line_no, text in _binary_lines(stream, label):
            record = _parse_record(text, label, line_no)
            asin = record.get("asin")
            if not isinstance(asin, str) or not asin.strip():
                raise P2RecError(f"{label}:{line_no}: field 'asin' missing or invalid ({asin!r:.40})")
            if asin in lines:
                raise P2RecError(f"{label}:{line_no}: duplicate asin {asin!r} (first on line {lines[asin]})")
            lines[asin] = line_no
            if asin not in wanted:
                continue
            paths = record.get("categories") or []
            if not isinstance(paths, list) or not all(isinstance(p, list) and all(isinstance(c, str) for c in p)
                                                      for p in paths):
                raise P2RecError(f"{label}:{line_no}: field 'categories' must be a list of category paths "
                                 f"(lists of names), found {paths!r:.80}")
            out[asin] = {"title": _text(record.get("title"), "title", f"{label}:{line_no}"),
                         "brand": _text(record.get("brand"), "brand", f"{label}:{line_no}"),
                         "categories": [c.strip() for p in paths for c in p if c.strip()]}
    return out
