"""Preparation from the original raw sources: MovieLens-1M, Amazon 2014 reviews, Yelp reviews.

Each preparer reads one raw file named by a catalog entry (``file``, relative to ``raw_dir``), keeps
(user, item, time) triples, applies iterative k-core filtering (``core``, default 5), orders every user's
interactions chronologically (ties keep the file order) and renumbers users and items from 1. It returns
``(user ids, sequences, sha256 of the raw file)``; :func:`sequence_data` then applies the short-user
policy. Every malformed line is a :class:`~p2rec.P2RecError` naming the file and the line.

Registry: ``RAW_SOURCES[source](entry, raw_dir, name)``. Adding a source = one function + one entry here
+ the source name in the schema's ``catalog.*.source`` enum.
"""
from __future__ import annotations

import ast
import datetime as _dt
import gzip
import hashlib
import json
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from p2rec import P2RecError
from p2rec.data.filtering import k_core, to_sequences
from p2rec.data.sequences import MIN_SPLIT_LENGTH, SequenceData
from p2rec.io import atomic_path, sha256_file

RawResult = tuple[np.ndarray, list[np.ndarray], str]

#: the opener used for downloads (tests replace it)
_urlopen = urllib.request.urlopen

MANUAL_DOWNLOAD = {
    "movielens-1m": "the MovieLens 1M archive ml-1m.zip from https://grouplens.org/datasets/movielens/1m/ "
                    "(https://files.grouplens.org/datasets/movielens/ml-1m.zip)",
    "amazon-2014": "the 2014 Amazon review data, '5-core' reviews file of the category (for Beauty: "
                   "reviews_Beauty_5.json.gz) from https://jmcauley.ucsd.edu/data/amazon/ (gzip or plain json "
                   "lines; do not unpack it into another format)",
    "yelp": "the Yelp Open Dataset (JSON) from https://www.yelp.com/dataset (accept the licence, download the "
            "JSON archive, unpack it) and take yelp_academic_dataset_review.json from it",
}


# ----------------------------------------------------------------------------------------------------
# files: location, checksum, download, line reading


def raw_file(entry: dict, raw_dir: Path, name: str) -> Path:
    """The raw input path: ``catalog.<name>.file`` relative to ``raw_dir`` (or absolute)."""
    file = entry.get("file") or (Path(entry["url"]).name if entry.get("url") else None)
    if not file:
        raise P2RecError(f"config key 'catalog.{name}.file': source '{entry.get('source')}' needs the raw file name")
    path = Path(file)
    return path if path.is_absolute() else Path(raw_dir) / path


def download(url: str, target: Path, expected_sha256: str | None = None, progress: bool = True) -> str:
    """Download ``url`` to ``target`` atomically (a temporary name until complete and verified).

    Returns the sha256 of the file. A checksum mismatch leaves nothing at ``target``.
    """
    target = Path(target)
    digest = hashlib.sha256()
    try:
        with _urlopen(url, timeout=60) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) if getattr(response, "headers", None) else 0
            done, shown, last = 0, -1, time.monotonic()
            with open(tmp, "wb") as out:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress and (time.monotonic() - last > 2.0 or (total and done * 10 // total > shown)):
                        shown = done * 10 // total if total else shown
                        last = time.monotonic()
                        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
                        print(f"downloading {url}: {size}", file=sys.stderr, flush=True)
            if total and done != total:
                raise P2RecError(f"download of {url} stopped after {done} of {total} bytes; nothing was written to "
                                 f"{target} (run again)")
            actual = digest.hexdigest()
            if expected_sha256 and actual != expected_sha256:
                raise P2RecError(f"download of {url}: sha256 {actual} differs from the declared {expected_sha256}; "
                                 f"nothing was written to {target}")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise P2RecError(f"cannot download {url} to {target} ({err}); download it by hand and put it at {target}") \
            from None
    return digest.hexdigest()


def fetch(entry: dict, raw_dir: Path, name: str) -> tuple[Path, str]:
    """The raw file, downloaded first when missing and the entry has a ``url``; checksums verified.

    Returns (path, sha256 of the file).
    """
    path = raw_file(entry, raw_dir, name)
    declared = {key: entry[key] for key in ("archive_sha256", "sha256") if entry.get(key)}
    if not path.exists():
        if entry.get("url"):
            print(f"dataset '{name}': {path} missing, downloading it from {entry['url']}", file=sys.stderr, flush=True)
            download(entry["url"], path, declared.get("archive_sha256") or declared.get("sha256"))
        else:
            what = MANUAL_DOWNLOAD.get(entry.get("source"), "the raw file")
            raise P2RecError(
                f"dataset '{name}': raw file {path} not found. Download {what}, and put it at {path} "
                f"(config keys 'raw_dir' = {str(raw_dir)!r} and 'catalog.{name}.file')"
            )
    if not path.is_file():
        raise P2RecError(f"dataset '{name}': {path} is not a file (config key 'catalog.{name}.file')")
    actual = sha256_file(path)
    for key, want in declared.items():
        if actual != want.lower():
            raise P2RecError(
                f"dataset '{name}': {path} has sha256 {actual}, catalog.{name}.{key} declares {want}; the file is "
                f"not the expected one (a truncated or changed download: delete it"
                f"{' to download it again' if entry.get('url') else ' and fetch it again'}, or fix the checksum)"
            )
    return path, actual


def _binary_lines(stream: IO[bytes], label: str) -> Iterator[tuple[int, str]]:
    """Non-empty lines as (line number, text) from a binary stream; bad UTF-8 or a corrupt/truncated
    compressed stream is an error naming the file and line."""
    line_no = 0
    try:
        for line_no, raw in enumerate(stream, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise P2RecError(f"{label}:{line_no}: not valid UTF-8 text (byte {err.start} of the line)") from None
            if line_no == 1:
                text = text.lstrip("\ufeff")
            text = text.strip()
            if text:
                yield line_no, text
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise P2RecError(f"{label}: compressed data truncated or corrupt after line {line_no} ({err})") from None


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


# ----------------------------------------------------------------------------------------------------
# shared tail: k-core, chronological order, renumbering


def _finish(rows: Iterable[tuple], entry: dict, name: str, label: str) -> tuple[np.ndarray, list[np.ndarray]]:
    df = pd.DataFrame(list(rows), columns=["user", "item", "time"])
    if df.empty:
        raise P2RecError(f"{label}: no interactions (empty file, or none passes the filters of catalog.{name})")
    core = int(entry.get("core", 5))
    df = k_core(df, core)
    if df.empty:
        raise P2RecError(f"dataset '{name}': no interactions left after {core}-core filtering of {label} "
                         f"(config key 'catalog.{name}.core')")
    users, sequences, _, _ = to_sequences(df)
    return users, sequences


def sequence_data(users: np.ndarray, sequences: list[np.ndarray], short_users: str, name: str) -> SequenceData:
    """Apply the short-user policy to prepared sequences (only possible with ``core`` below 3).

    ``drop`` removes users with fewer than 3 items (counted as ``dropped_short_users``) and renumbers items
    densely, keeping their order; ``error`` fails naming the config key.
    """
    lengths = np.array([len(s) for s in sequences])
    short = lengths < MIN_SPLIT_LENGTH
    if short.any() and short_users == "error":
        first = int(np.flatnonzero(short)[0])
        raise P2RecError(
            f"dataset '{name}': user {int(users[first])} (numbered after filtering) has {lengths[first]} item(s); "
            f"leave-one-out needs at least {MIN_SPLIT_LENGTH} (config key 'catalog.{name}.short_users' is 'error': "
            f"set it to 'drop', or 'catalog.{name}.core' to {MIN_SPLIT_LENGTH} or more)"
        )
    kept = [s for s, bad in zip(sequences, short) if not bad]
    if not kept:
        raise P2RecError(f"dataset '{name}': no user has {MIN_SPLIT_LENGTH} or more items (config key "
                         f"'catalog.{name}.core')")
    if short.any():
        mapping: dict[int, int] = {}
        for seq in kept:
            for item in seq.tolist():
                mapping.setdefault(item, len(mapping) + 1)
        kept = [np.array([mapping[i] for i in s.tolist()], dtype=np.int64) for s in kept]
    return SequenceData(np.asarray(users[~short], dtype=np.int64), kept, int(max(int(s.max()) for s in kept)),
                        [int(u) for u in users[short]])


def _min_rating(entry: dict) -> float | None:
    value = entry.get("min_rating")
    return None if value is None else float(value)


# ----------------------------------------------------------------------------------------------------
# MovieLens-1M: ratings.dat (UserID::MovieID::Rating::Timestamp), read from inside ml-1m.zip


def _ratings_rows(lines: Iterable[tuple[int, str]], label: str, min_rating: float | None) -> Iterator[tuple]:
    for line_no, text in lines:
        fields = text.split("::")
        if len(fields) != 4:
            raise P2RecError(f"{label}:{line_no}: expected UserID::MovieID::Rating::Timestamp, found "
                             f"{len(fields)} field(s) ({text[:80]!r})")
        try:
            user, item, rating, stamp = (int(f) for f in fields)
        except ValueError:
            raise P2RecError(f"{label}:{line_no}: non-integer field in {text[:80]!r}") from None
        if user < 1 or item < 1:
            raise P2RecError(f"{label}:{line_no}: ids must be positive (UserID {user}, MovieID {item})")
        if stamp < 0:
            raise P2RecError(f"{label}:{line_no}: negative timestamp {stamp}")
        if min_rating is None or rating >= min_rating:
            yield user, item, stamp


def prepare_movielens_1m(entry: dict, raw_dir: Path, name: str) -> RawResult:
    path, sha = fetch(entry, raw_dir, name)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if Path(m).name == "ratings.dat"]
                if not members:
                    raise P2RecError(f"{path}: the archive holds no ratings.dat (is it ml-1m.zip?)")
                label = f"{path}:{members[0]}"
                with archive.open(members[0]) as stream:
                    rows = list(_ratings_rows(_binary_lines(stream, label), label, _min_rating(entry)))
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise P2RecError(f"{path}: corrupt zip archive ({err}); delete it and fetch it again") from None
    else:
        if path.suffix == ".zip":
            raise P2RecError(f"{path}: not a zip archive (a truncated or failed download? delete it and fetch it "
                             f"again)")
        label = str(path)
        with open(path, "rb") as stream:  # an unpacked ratings.dat is accepted too
            rows = list(_ratings_rows(_binary_lines(stream, label), label, _min_rating(entry)))
    return (*_finish(rows, entry, name, label), sha)


# ----------------------------------------------------------------------------------------------------
# Amazon 2014: one review per line (strict JSON, or the python-dict literals of the 2014 dumps)


def _parse_record(text: str, label: str, line_no: int) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise P2RecError(f"{label}:{line_no}: not a JSON object or python dict literal ({text[:80]!r})") from None
    if not isinstance(record, dict):
        raise P2RecError(f"{label}:{line_no}: expected one object per line, found {type(record).__name__}")
    return record


def _field(record: dict, key: str, label: str, line_no: int, kind: type | tuple):
    if key not in record:
        raise P2RecError(f"{label}:{line_no}: field '{key}' missing")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise P2RecError(f"{label}:{line_no}: field '{key}' has the invalid value {value!r}")
    return value


def _rating_ok(record: dict, key: str, min_rating: float | None, label: str, line_no: int) -> bool:
    if min_rating is None:
        return True
    return float(_field(record, key, label, line_no, (int, float))) >= min_rating


def _amazon_rows(lines: Iterable[tuple[int, str]], label: str, min_rating: float | None) -> Iterator[tuple]:
    for line_no, text in lines:
        record = _parse_record(text, label, line_no)
        user = _field(record, "reviewerID", label, line_no, str)
        item = _field(record, "asin", label, line_no, str)
        stamp = _field(record, "unixReviewTime", label, line_no, int)
        if stamp < 0:
            raise P2RecError(f"{label}:{line_no}: negative unixReviewTime {stamp}")
        if _rating_ok(record, "overall", min_rating, label, line_no):
            yield user, item, stamp


def prepare_amazon_2014(entry: dict, raw_dir: Path, name: str) -> RawResult:
    path, sha = fetch(entry, raw_dir, name)
    label = str(path)
    with _open_maybe_gzip(path) as stream:
        rows = list(_amazon_rows(_binary_lines(stream, label), label, _min_rating(entry)))
    return (*_finish(rows, entry, name, label), sha)


# ----------------------------------------------------------------------------------------------------
# Yelp: yelp_academic_dataset_review.json, reviews whose year lies in [year_from, year_to]

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2}))?")
_DATE_PREFIX = re.compile(r'"date"\s*:\s*"(\d{4})-')


def _yelp_time(value, label: str, line_no: int) -> tuple[int, int]:
    """(year, sortable integer YYYYMMDDhhmmss) of a Yelp date string."""
    match = _DATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise P2RecError(f"{label}:{line_no}: field 'date' is {value!r}, expected 'YYYY-MM-DD HH:MM:SS'")
    parts = [int(p) if p is not None else 0 for p in match.groups()]
    try:
        _dt.datetime(*parts)
    except ValueError as err:
        raise P2RecError(f"{label}:{line_no}: invalid date {value!r} ({err})") from None
    year, month, day, hour, minute, second = parts
    return year, ((((year * 100 + month) * 100 + day) * 100 + hour) * 100 + minute) * 100 + second


def _yelp_rows(lines: Iterable[tuple[int, str]], label: str, year_from: int | None, year_to: int | None,
               min_rating: float | None) -> Iterator[tuple]:
    def outside(year: int) -> bool:
        return (year_from is not None and year < year_from) or (year_to is not None and year > year_to)

    for line_no, text in lines:
        prefix = _DATE_PREFIX.search(text)  # cheap pre-filter: most lines of the full dump are other years
        if prefix and outside(int(prefix.group(1))):
            continue
        record = _parse_record(text, label, line_no)
        user = _field(record, "user_id", label, line_no, str)
        item = _field(record, "business_id", label, line_no, str)
        year, stamp = _yelp_time(_field(record, "date", label, line_no, str), label, line_no)
        if outside(year) or not _rating_ok(record, "stars", min_rating, label, line_no):
            continue
        yield user, item, stamp


def prepare_yelp(entry: dict, raw_dir: Path, name: str) -> RawResult:
    path, sha = fetch(entry, raw_dir, name)
    year_from, year_to = entry.get("year_from"), entry.get("year_to")
    if year_from is not None and year_to is not None and year_from > year_to:
        raise P2RecError(f"config keys 'catalog.{name}.year_from' ({year_from}) and 'catalog.{name}.year_to' "
                         f"({year_to}): the range is empty")
    label = str(path)
    with _open_maybe_gzip(path) as stream:
        rows = list(_yelp_rows(_binary_lines(stream, label), label, year_from, year_to, _min_rating(entry)))
    return (*_finish(rows, entry, name, label), sha)


RAW_SOURCES: dict[str, Callable[[dict, Path, str], RawResult]] = {
    "movielens-1m": prepare_movielens_1m,
    "amazon-2014": prepare_amazon_2014,
    "yelp": prepare_yelp,
}
