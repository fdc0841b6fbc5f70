"""Stage 'prepare': turn a catalog entry into ``sequences.txt`` + ``stats.json`` (+ ``truth.tsv``, and ``item_map.csv``
where a standard file's item ids were renumbered).

Standard files are verified against the checksum and statistics the catalog declares; a difference is
an error that names the numbers, never a silent use of a changed file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from p2rec import P2RecError
from p2rec.workflow.config import validate_catalog_entry
from p2rec.workflow.names import name_problem
from p2rec.data.sequences import SequenceData, format_sequences, sequence_stats
from p2rec.data.standard import dense_items, read_standard_file
from p2rec.io import atomic_path, sha256_file, write_json, write_text

#: raw item id -> item id of a renumbered dataset, beside its sequences.txt (docs/data.md)
ITEM_MAP = "item_map.csv"


def resolve_data_file(entry: dict, data_dir: str | Path, name: str) -> Path:
    path = Path(entry["file"])
    if not path.is_absolute():
        if not Path(data_dir).is_dir():
            raise P2RecError(f"config key 'data_dir': folder '{data_dir}' does not exist (needed by dataset '{name}')")
        path = Path(data_dir) / path
    return path


def check_expected(name: str, stats: dict, expected: dict) -> None:
    diffs = [f"{key}: expected {want}, found {stats[key]}" for key, want in expected.items() if stats[key] != want]
    if diffs:
        raise P2RecError(f"dataset '{name}': statistics differ from catalog.{name}.expected: " + "; ".join(diffs))


def prepare_dataset(name: str, entry: dict, data_dir: str | Path, raw_dir: str | Path, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    truth: np.ndarray | None = None
    input_sha = None
    raw_items: np.ndarray | None = None
    unsafe = name_problem("catalog", name, "dataset")  # the CLI gets the name alone: the config's check
    if unsafe:
        raise P2RecError(f"invalid configuration: {unsafe}")
    entry = validate_catalog_entry(name, entry)  # the CLI gets entries as JSON: same checks as the config
    source = entry["source"]
    if source == "synthetic":
        from p2rec.data.synthetic import generate

        users, sequences, truth = generate(core=entry.get("core", 5), **entry.get("synthetic", {}))
        data = SequenceData(users, sequences, int(max(s.max() for s in sequences)))
    elif source == "sequences":
        path = resolve_data_file(entry, data_dir, name)
        if not path.exists():
            raise P2RecError(f"dataset '{name}': file '{path}' not found (config keys 'data_dir' and 'catalog.{name}.file')")
        if not path.is_file():
            raise P2RecError(f"dataset '{name}': '{path}' is {'a directory' if path.is_dir() else 'not a regular file'}"
                             f", not a data file (config keys 'data_dir' and 'catalog.{name}.file')")
        try:
            input_sha = sha256_file(path)
        except OSError as err:
            raise P2RecError(f"dataset '{name}': cannot read '{path}' ({err.strerror or err}; config keys 'data_dir' "
                             f"and 'catalog.{name}.file')") from None
        if entry.get("sha256") and entry["sha256"] != input_sha:
            raise P2RecError(f"dataset '{name}': {path} has sha256 {input_sha}, catalog.{name}.sha256 declares "
                             f"{entry['sha256']}; the file changed (restore it or update the checksum)")
        data = read_standard_file(path, short_users=entry.get("short_users", "drop"))
        data, raw_items = dense_items(data)  # never an item table sized by the largest raw id
        if raw_items is not None and entry.get("sparse_ids") == "error":
            raise P2RecError(
                f"dataset '{name}': {path}: item ids are not 1..N ({len(raw_items)} distinct ids, the largest "
                f"{int(raw_items.max())}); config key 'catalog.{name}.sparse_ids' is 'error' (unset or 'renumber' "
                f"numbers them 1..N by first appearance and saves the map as {ITEM_MAP})")
    else:
        from p2rec.data.raw import RAW_SOURCES, sequence_data

        if source not in RAW_SOURCES:
            raise P2RecError(f"config key 'catalog.{name}.source': no preparer for source '{source}'")
        users, sequences, input_sha = RAW_SOURCES[source](entry, Path(raw_dir), name)
        data = sequence_data(users, sequences, entry.get("short_users", "drop"), name)
    stats = sequence_stats(data)
    stats.update({"dataset": name, "source": source, "input_sha256": input_sha})
    if raw_items is not None:  # only then: stats.json of a file with ids 1..N stays as it was
        stats["item_ids"] = {"renumbered": True, "order": "first appearance", "map": ITEM_MAP,
                             "raw_distinct": int(len(raw_items)), "raw_max": int(raw_items.max())}
    if entry.get("expected"):
        check_expected(name, stats, entry["expected"])
    with atomic_path(out_dir / "sequences.txt") as tmp:
        tmp.write_text(format_sequences(data.users, data.sequences), encoding="utf-8")
    rows = ["item,category"]
    if truth is not None:
        rows += [f"{i},{c}" for i, c in enumerate(truth) if i > 0]
    write_text(out_dir / "truth.tsv", "\n".join(rows) + "\n")
    if raw_items is not None:
        write_text(out_dir / ITEM_MAP, "raw_item_id,item_id\n"
                   + "".join(f"{r},{i}\n" for i, r in enumerate(raw_items.tolist(), start=1)))
    else:  # a map left by an earlier preparation of another file would describe other data
        (out_dir / ITEM_MAP).unlink(missing_ok=True)
    write_json(out_dir / "stats.json", stats)
    return stats
