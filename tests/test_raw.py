"""Raw-source preparers (MovieLens-1M, Amazon 2014, Yelp) on small hand-checkable fixture files.

Expected sequences are worked out by hand in the comments; see tests/fixtures/raw/.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from p2rec import P2RecError
from p2rec.data import raw
from p2rec.data.raw import RAW_SOURCES, sequence_data
from p2rec.io import read_json
from p2rec.data.prepare import prepare_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "raw"

# ratings.dat, core 3. Round 1 drops user 4 (2 ratings) and movie 50 (2 users); movie 40 is left with
# users 1 and 6 -> dropped in round 2; user 6 is left with movies 10, 20 -> dropped in round 3.
# Users sort numerically 1, 2, 12 -> 1, 2, 3. User 1: 20@90, 10@100, 30@110 -> items 20=1, 10=2, 30=3;
# user 2: 30@150, then 20@200 and 10@200 tie and keep the file order; user 12: 10@50, 20@60, 30@70.
ML_EXPECTED = ([1, 2, 3], [[1, 2, 3], [3, 1, 2], [2, 1, 3]])

# Amazon, 5-core: users A..E rate P1..P5 in the orders below; F (4 reviews) and P6 (4 reviewers) go.
# Users sort AAX..AEX -> 1..5; A's order numbers P1..P5 as 1..5.
AMAZON_EXPECTED = ([1, 2, 3, 4, 5], [[1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [2, 1, 4, 3, 5], [3, 5, 1, 2, 4],
                                     [1, 3, 5, 2, 4]])

# Yelp, years 2019..2019, core 2: r01 (2018) and r09 (2020) are out; b5 has one review -> goes, and
# with it u4. u1: b2 (01-15), b1 (03-01), b3 (12-31) -> b2=1, b1=2, b3=3; u2: b2 and b1 in the same
# second (file order: b2 first) -> [1, 2]; u3: b3 (02-02), b1 (06-01), b2 (07-01) -> [3, 2, 1].
YELP_EXPECTED = ([1, 2, 3], [[1, 2, 3], [1, 2], [3, 2, 1]])


def _zip_ratings(target: Path, ratings: bytes | None = None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("ml-1m/ratings.dat", date_time=(2003, 2, 28, 17, 49, 50))
        archive.writestr(info, ratings if ratings is not None else (FIXTURES / "ratings.dat").read_bytes())
        archive.writestr(zipfile.ZipInfo("ml-1m/README", date_time=(2003, 2, 28, 17, 49, 50)), b"readme\n")
    return target


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_lists(result):
    users, sequences, _sha256 = result
    return [int(u) for u in users], [s.tolist() for s in sequences]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- MovieLens


def test_movielens_from_zip_iterative_core(tmp_path):
    archive = _zip_ratings(tmp_path / "raw" / "ml-1m.zip")
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "core": 3, "archive_sha256": _sha(archive)}
    result = RAW_SOURCES["movielens-1m"](entry, tmp_path / "raw", "ml")
    assert _as_lists(result) == ML_EXPECTED
    assert result[2] == _sha(archive)
    assert all(s.dtype == np.int64 for s in result[1])


def test_movielens_unpacked_ratings_dat(tmp_path):
    entry = {"source": "movielens-1m", "file": str(FIXTURES / "ratings.dat"), "core": 3}
    assert _as_lists(RAW_SOURCES["movielens-1m"](entry, tmp_path, "ml")) == ML_EXPECTED


def test_movielens_min_rating_filters_before_core(tmp_path):
    # ratings >= 3 only: user 1 loses 40 (1 star), user 4 loses 40 (2 stars), user 6 loses 10 (2 stars)
    entry = {"source": "movielens-1m", "file": str(FIXTURES / "ratings.dat"), "core": 3, "min_rating": 3}
    users, seqs = _as_lists(RAW_SOURCES["movielens-1m"](entry, tmp_path, "ml"))
    assert users == [1, 2, 3] and seqs == ML_EXPECTED[1]
    entry["min_rating"] = 5  # only 5-star ratings: 3 users x <= 2 items -> nothing survives 3-core
    with pytest.raises(P2RecError, match=r"no interactions left after 3-core .*'catalog.ml.core'"):
        RAW_SOURCES["movielens-1m"](entry, tmp_path, "ml")


def test_movielens_archive_checksum_mismatch_names_both(tmp_path):
    archive = _zip_ratings(tmp_path / "raw" / "ml-1m.zip")
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "archive_sha256": "0" * 64}
    with pytest.raises(P2RecError) as err:
        RAW_SOURCES["movielens-1m"](entry, tmp_path / "raw", "ml")
    message = str(err.value)
    assert str(archive) in message and _sha(archive) in message and "0" * 64 in message
    assert "catalog.ml.archive_sha256" in message


def test_movielens_download_from_file_url(tmp_path, capsys):
    source = _zip_ratings(tmp_path / "mirror" / "ml-1m.zip")
    raw_dir = tmp_path / "raw"
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "url": source.as_uri(), "core": 3,
             "archive_sha256": _sha(source)}
    result = RAW_SOURCES["movielens-1m"](entry, raw_dir, "ml")
    assert _as_lists(result) == ML_EXPECTED
    assert (raw_dir / "ml-1m.zip").read_bytes() == source.read_bytes()
    assert _files(raw_dir) == ["ml-1m.zip"]  # no temporary file left
    assert "downloading" in capsys.readouterr().err
    # second call: the file is there, no download (the mirror is gone)
    source.unlink()
    assert _as_lists(RAW_SOURCES["movielens-1m"](entry, raw_dir, "ml")) == ML_EXPECTED


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    source = _zip_ratings(tmp_path / "mirror" / "ml-1m.zip")
    raw_dir = tmp_path / "raw"
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "url": source.as_uri(), "archive_sha256": "f" * 64}
    with pytest.raises(P2RecError, match=f"sha256 {_sha(source)} differs from the declared {'f' * 64}"):
        RAW_SOURCES["movielens-1m"](entry, raw_dir, "ml")
    assert _files(raw_dir) == []


def test_download_failure_says_where_to_put_the_file(tmp_path):
    raw_dir = tmp_path / "raw"
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "url": (tmp_path / "absent.zip").as_uri()}
    with pytest.raises(P2RecError, match=r"cannot download .*absent.zip.*put it at .*raw/ml-1m.zip"):
        RAW_SOURCES["movielens-1m"](entry, raw_dir, "ml")
    assert _files(raw_dir) == []


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int):
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}


def test_download_through_patched_opener_and_truncation(tmp_path, monkeypatch):
    payload = _zip_ratings(tmp_path / "mirror" / "ml-1m.zip").read_bytes()
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return _FakeResponse(payload, len(payload))

    monkeypatch.setattr(raw, "_urlopen", opener)
    sha = raw.download("https://example.org/ml-1m.zip", tmp_path / "a" / "ml-1m.zip", hashlib.sha256(payload).hexdigest())
    assert calls == ["https://example.org/ml-1m.zip"] and sha == hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "a" / "ml-1m.zip").read_bytes() == payload
    # the server closes the connection early: nothing lands at the target
    monkeypatch.setattr(raw, "_urlopen", lambda url, timeout: _FakeResponse(payload[:100], len(payload)))
    with pytest.raises(P2RecError, match=f"stopped after 100 of {len(payload)} bytes"):
        raw.download("https://example.org/ml-1m.zip", tmp_path / "b" / "ml-1m.zip")
    assert _files(tmp_path / "b") == []


def test_movielens_truncated_archive(tmp_path):
    archive = _zip_ratings(tmp_path / "raw" / "ml-1m.zip")
    archive.write_bytes(archive.read_bytes()[:60])
    with pytest.raises(P2RecError, match=r"ml-1m.zip: not a zip archive"):
        RAW_SOURCES["movielens-1m"]({"source": "movielens-1m", "file": "ml-1m.zip"}, tmp_path / "raw", "ml")


# ----------------------------------------------------------------------------------------------- Amazon


def test_amazon_5core_json_and_dict_literal_lines(tmp_path):
    entry = {"source": "amazon-2014", "file": str(FIXTURES / "amazon_reviews_5.json")}  # core 5 by default
    result = RAW_SOURCES["amazon-2014"](entry, tmp_path, "beauty")
    assert _as_lists(result) == AMAZON_EXPECTED
    assert result[2] == _sha(FIXTURES / "amazon_reviews_5.json")


def test_amazon_gzip_gives_the_same(tmp_path):
    gz = tmp_path / "reviews_Beauty_5.json.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "amazon_reviews_5.json").read_bytes(), mtime=0))
    entry = {"source": "amazon-2014", "file": "reviews_Beauty_5.json.gz"}
    assert _as_lists(RAW_SOURCES["amazon-2014"](entry, tmp_path, "beauty")) == AMAZON_EXPECTED


def test_amazon_truncated_gzip_names_file(tmp_path):
    data = gzip.compress((FIXTURES / "amazon_reviews_5.json").read_bytes())
    (tmp_path / "r.json.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(P2RecError, match=r"r.json.gz: compressed data truncated or corrupt after line \d+"):
        RAW_SOURCES["amazon-2014"]({"source": "amazon-2014", "file": "r.json.gz"}, tmp_path, "beauty")


def test_amazon_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(P2RecError) as err:
        RAW_SOURCES["amazon-2014"]({"source": "amazon-2014", "file": "reviews_Beauty_5.json.gz"}, tmp_path, "beauty-raw")
    message = str(err.value)
    assert "reviews_Beauty_5.json.gz" in message and str(tmp_path / "reviews_Beauty_5.json.gz") in message
    assert "catalog.beauty-raw.file" in message and "5-core" in message


# ------------------------------------------------------------------------------------------------- Yelp


def test_yelp_year_filter_and_core(tmp_path):
    entry = {"source": "yelp", "file": str(FIXTURES / "yelp_reviews.json"), "core": 2, "year_from": 2019,
             "year_to": 2019}
    assert _as_lists(RAW_SOURCES["yelp"](entry, tmp_path, "yelp")) == YELP_EXPECTED


def test_yelp_without_year_filter_keeps_all_years(tmp_path):
    # all years, core 2: b4 (one review, 2018) still goes; b3 gains r09 -> u2: b2, b1 (tie), b3 (2020)
    entry = {"source": "yelp", "file": str(FIXTURES / "yelp_reviews.json"), "core": 2}
    users, seqs = _as_lists(RAW_SOURCES["yelp"](entry, tmp_path, "yelp"))
    assert users == [1, 2, 3] and seqs == [[1, 2, 3], [1, 2, 3], [3, 2, 1]]


def test_yelp_missing_file_says_exactly_what_and_where(tmp_path):
    entry = {"source": "yelp", "file": "yelp_academic_dataset_review.json", "year_from": 2019, "year_to": 2019}
    with pytest.raises(P2RecError) as err:
        RAW_SOURCES["yelp"](entry, tmp_path / "raw", "yelp-raw")
    message = str(err.value)
    assert "https://www.yelp.com/dataset" in message
    assert f"put it at {tmp_path / 'raw' / 'yelp_academic_dataset_review.json'}" in message
    assert "'raw_dir'" in message and "catalog.yelp-raw.file" in message


def test_yelp_empty_year_range(tmp_path):
    entry = {"source": "yelp", "file": str(FIXTURES / "yelp_reviews.json"), "year_from": 2020, "year_to": 2019}
    with pytest.raises(P2RecError, match=r"catalog.y.year_from.*catalog.y.year_to.*empty"):
        RAW_SOURCES["yelp"](entry, tmp_path, "y")


# ---------------------------------------------------------------------------- malformed lines, all parsers


BAD_LINES = [
    ("movielens-1m", "ratings.dat", b"1::10::5::100\n1::20::5\n", r"ratings.dat:2: expected UserID::MovieID"),
    ("movielens-1m", "ratings.dat", b"1::10::5::100\n\n1::x::5::7\n", r"ratings.dat:3: non-integer field"),
    ("movielens-1m", "ratings.dat", b"1::10::5::100\n-2::10::5::7\n", r"ratings.dat:2: ids must be positive"),
    ("movielens-1m", "ratings.dat", b"1::10::5::100\n2::10::5::\xff\n", r"ratings.dat:2: not valid UTF-8"),
    ("movielens-1m", "ratings.dat", b"", r"ratings.dat: no interactions"),
    ("amazon-2014", "r.json", b'{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "a", "as\n',
     r"r.json:2: not a JSON object or python dict literal"),
    ("amazon-2014", "r.json", b'{"reviewerID": "a", "unixReviewTime": 1}\n', r"r.json:1: field 'asin' missing"),
    ("amazon-2014", "r.json", b'{"reviewerID": "a", "asin": "b", "unixReviewTime": "soon"}\n',
     r"r.json:1: field 'unixReviewTime' has the invalid value 'soon'"),
    ("amazon-2014", "r.json", b'[1, 2]\n', r"r.json:1: expected one object per line, found list"),
    ("amazon-2014", "r.json", b'{"reviewerID": "\xe9", "asin": "b", "unixReviewTime": 1}\n',
     r"r.json:1: not valid UTF-8"),
    ("amazon-2014", "r.json", b"\n\n", r"r.json: no interactions"),
    ("yelp", "y.json", b'{"user_id": "u", "business_id": "b", "date": "2019-13-01 00:00:00"}\n',
     r"y.json:1: invalid date '2019-13-01 00:00:00'"),
    ("yelp", "y.json", b'{"user_id": "u", "business_id": "b", "date": "yesterday"}\n',
     r"y.json:1: field 'date' is 'yesterday', expected 'YYYY-MM-DD HH:MM:SS'"),
    ("yelp", "y.json", b'{"user_id": "u", "date": "2019-01-01 00:00:00"}\n', r"y.json:1: field 'business_id' missing"),
]


@pytest.mark.parametrize("source, file, content, message", BAD_LINES)
def test_malformed_raw_lines_name_file_and_line(tmp_path, source, file, content, message):
    (tmp_path / file).write_bytes(content)
    with pytest.raises(P2RecError, match=message):
        RAW_SOURCES[source]({"source": source, "file": file}, tmp_path, "d")


# ------------------------------------------------------------------------- short users, prepare end to end


def test_sequence_data_drops_short_users_and_renumbers_items():
    users = np.array([1, 2, 3])
    seqs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([2, 5, 1])]
    data = sequence_data(users, seqs, "drop", "d")
    assert data.users.tolist() == [1, 3] and data.dropped_users == [2]
    assert [s.tolist() for s in data.sequences] == [[1, 2, 3], [2, 4, 1]]  # 4 vanished, 5 -> 4
    assert data.num_items == 4
    with pytest.raises(P2RecError, match=r"user 2 .* has 2 item\(s\).*'catalog.d.short_users' is 'error'"):
        sequence_data(users, seqs, "error", "d")


def test_prepare_yelp_counts_dropped_short_users(tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    shutil.copy(FIXTURES / "yelp_reviews.json", raw_dir / "yelp_academic_dataset_review.json")
    entry = {"source": "yelp", "file": "yelp_academic_dataset_review.json", "core": 2, "year_from": 2019,
             "year_to": 2019, "expected": {"users": 2, "items": 3, "interactions": 6}}
    stats = prepare_dataset("yelp-fix", entry, tmp_path / "nodata", raw_dir, tmp_path / "out")
    assert (tmp_path / "out" / "sequences.txt").read_text() == "1 1 2 3\n3 3 2 1\n"
    saved = read_json(tmp_path / "out" / "stats.json")
    assert saved == stats and stats["dropped_short_users"] == 1
    assert stats["input_sha256"] == _sha(raw_dir / "yelp_academic_dataset_review.json")
    assert stats["source"] == "yelp"
    with pytest.raises(P2RecError, match=r"'catalog.yelp-fix.short_users' is 'error'"):
        prepare_dataset("yelp-fix", dict(entry, short_users="error"), tmp_path, raw_dir, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_prepare_movielens_end_to_end_with_expected_stats(tmp_path):
    archive = _zip_ratings(tmp_path / "raw" / "ml-1m.zip")
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "core": 3, "archive_sha256": _sha(archive),
             "expected": {"users": 3, "items": 3, "interactions": 9}}
    prepare_dataset("ml-fix", entry, tmp_path, tmp_path / "raw", tmp_path / "out")
    assert (tmp_path / "out" / "sequences.txt").read_text() == "1 1 2 3\n2 3 1 2\n3 2 1 3\n"
    entry["expected"]["items"] = 4
    with pytest.raises(P2RecError, match=r"items: expected 4, found 3"):
        prepare_dataset("ml-fix", entry, tmp_path, tmp_path / "raw", tmp_path / "out3")
    assert not (tmp_path / "out3").exists()
