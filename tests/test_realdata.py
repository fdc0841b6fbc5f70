"""The three standard files (data dir from P2REC_DATA_DIR, else ../shared/data): prepared through the
config.yaml catalog entries, their declared statistics and checksums must pass; a copy changed by one byte
must be refused, naming the file and both checksums."""
from __future__ import annotations

import shutil

import pytest
import yaml

from p2rec import P2RecError
from p2rec.io import read_json, sha256_file
from p2rec.data.prepare import prepare_dataset
from tests.conftest import REPO, require_standard_data

pytestmark = pytest.mark.realdata

CATALOG = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))["catalog"]
STANDARD = ["beauty", "yelp", "ml-1m"]
# the published statistics (shared data README); config.yaml must declare the same
PUBLISHED = {"beauty": (22363, 12101, 198502, 5), "yelp": (30431, 20033, 316354, 5), "ml-1m": (6040, 3416, 999611, 18)}


@pytest.mark.parametrize("name", STANDARD)
def test_standard_file_matches_its_declared_statistics_and_checksum(tmp_path, name):
    data_dir = require_standard_data()
    entry = CATALOG[name]
    assert entry.get("sha256") and entry.get("expected"), f"catalog.{name} must declare sha256 and expected"
    stats = prepare_dataset(name, entry, data_dir, tmp_path / "raw", tmp_path / "out")
    users, items, interactions, min_len = PUBLISHED[name]
    assert (stats["users"], stats["items"], stats["interactions"]) == (users, items, interactions)
    assert entry["expected"] == {"users": users, "items": items, "interactions": interactions}
    assert stats["length"]["min"] == min_len and stats["dropped_short_users"] == 0
    assert stats["items_seen"] == items  # ids 1..items, no gap
    assert stats["input_sha256"] == entry["sha256"] == sha256_file(data_dir / entry["file"])
    assert read_json(tmp_path / "out" / "stats.json") == stats
    # the prepared file is the standard file, line for line
    assert (tmp_path / "out" / "sequences.txt").read_text().split("\n") == \
        (data_dir / entry["file"]).read_text().rstrip("\n").split("\n") + [""]


def test_standard_file_changed_by_one_byte_is_refused(tmp_path):
    data_dir = require_standard_data()
    entry = CATALOG["beauty"]
    copy_dir = tmp_path / "data"
    (copy_dir / "beauty").mkdir(parents=True)
    target = copy_dir / entry["file"]
    shutil.copy(data_dir / entry["file"], target)
    raw = bytearray(target.read_bytes())
    position = raw.index(b" 7 ")  # an item id 7 becomes 8: still a well-formed file
    raw[position + 1] = ord("8")
    target.write_bytes(bytes(raw))
    changed = sha256_file(target)
    with pytest.raises(P2RecError) as err:
        prepare_dataset("beauty", entry, copy_dir, tmp_path / "raw", tmp_path / "out")
    message = str(err.value)
    assert str(target) in message and changed in message and entry["sha256"] in message
    assert "catalog.beauty.sha256" in message
    assert not (tmp_path / "out").exists()
