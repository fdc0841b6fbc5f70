"""The catalogue of bad inputs (docs/robustness.md): every case fails with an error that names the file and
line or the config key, and leaves nothing new in the output folder (no temporary file either)."""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from p2rec import P2RecError
from p2rec.workflow.config import validate_config
from p2rec.workflow.names import check_names
from p2rec.io import sha256_file
from p2rec.data.prepare import prepare_dataset
from p2rec.data.standard import read_standard_file
from p2rec.training.runner import run_training
from tests.conftest import REPO, run_snakemake

SETTINGS = {
    "backbone": "sasrec",
    "model": {"num_layers": 1, "num_heads": 1, "dropout": 0.2},
    "train": {"hidden": 8, "max_len": 10, "batch_size": 32, "epochs": 2, "patience": 2, "device": "cpu",
              "threads": 1},
    "eval": {"ks": [5, 10]},
}


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (files, folders, hidden temporary files)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


@contextlib.contextmanager
def leaves_nothing(root: Path):
    """The block must change nothing under ``root``."""
    before = tree(root)
    yield
    assert tree(root) == before, f"new files left behind: {sorted(set(tree(root)) - set(before))}"


def fails_cleanly(root: Path, match: str, fn, *args, **kwargs) -> str:
    with leaves_nothing(root), pytest.raises(P2RecError, match=match) as err:
        fn(*args, **kwargs)
    return str(err.value)


def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small prepared synthetic dataset (sequences.txt) for the training stage."""
    out = tmp_path_factory.mktemp("data")
    prepare_dataset("synthetic", {"source": "synthetic", "synthetic": {"users": 60, "items": 40, "categories": 4}},
                    out, out, out)
    return out / "sequences.txt"


def num_items(path: Path) -> int:
    return max(max(int(t) for t in line.split()[1:]) for line in path.read_text().splitlines())


# ------------------------------------------------------------------------------ data files (prepare stage)

DATA_LINES = [
    pytest.param(b"1 2 3 4\n2 3 x 5\n", r"data.txt:2: 'x' is not an integer id", id="malformed-line"),
    pytest.param(b"1 2 3 4\n2 3 4.5 5\n", r"data.txt:2: '4.5' is not an integer id", id="non-integer-id"),
    pytest.param(b"1 2 3 4\n-2 3 4 5\n", r"data.txt:2: negative user id -2", id="negative-user-id"),
    pytest.param(b"1 2 3 4\n2 3 -4 5\n", r"data.txt:2: item id -4 is not >= 1", id="negative-item-id"),
    pytest.param(b"1 2 3 4\n2 3 0 5\n", r"data.txt:2: item id 0 is not >= 1 \(0 is reserved", id="item-id-zero"),
    pytest.param(b"", r"data.txt: no user sequences", id="empty-file"),
    pytest.param(b"\n  \n", r"data.txt: no user sequences", id="blank-lines-only"),
    pytest.param(b"1 2 3 4\n2 3 \xe9 5\n", r"data.txt:2: not valid UTF-8", id="wrong-encoding"),
    pytest.param(b"1 2 3 4\n2 5 6 7\n1 4 5 6\n", r"data.txt:3: duplicate user 1 \(first on line 1\)",
                 id="duplicate-user"),
    pytest.param(b"1 2 3 4\n2 3 18446744073709551616 5\n",
                 r"data.txt:2: item id 18446744073709551616 is out of the supported range \(ids are 64-bit: at most "
                 r"9223372036854775807\)", id="item-id-beyond-64-bit"),
    pytest.param(b"1 2 3 4\n9223372036854775808 3 4 5\n",
                 r"data.txt:2: user id 9223372036854775808 is out of the supported range", id="user-id-beyond-64-bit"),
    pytest.param(b"1 2 3 4\n\n\n2 3 x 5\n", r"data.txt:4: 'x' is not an integer id", id="blank-lines-count-as-lines"),
    pytest.param(b"1 2\x0c3 4\r\n2 3 4 5\r3 4 y 6\n", r"data.txt:3: 'y' is not an integer id",
                 id="only-line-ends-count-as-lines"),
    pytest.param(b"1 2 3 4\n\xef\xbb\xbf2 3 4 5\n", r"data.txt:2: '\\ufeff2' is not an integer id",
                 id="byte-order-mark-not-at-the-start"),
]


@pytest.mark.parametrize("content, message", DATA_LINES)
def test_bad_data_file(tmp_path, content, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.txt").write_bytes(content)
    entry = {"source": "sequences", "file": "data.txt"}
    fails_cleanly(tmp_path, message, prepare_dataset, "d", entry, tmp_path / "data", tmp_path, tmp_path / "out")


def test_short_user_in_error_mode(tmp_path):
    (tmp_path / "data.txt").write_text("1 2 3 4\n2 5 6\n3 7 8 9\n")
    entry = {"source": "sequences", "file": "data.txt", "short_users": "error"}
    fails_cleanly(tmp_path, r"data.txt:2: user 2 has 2 item\(s\); leave-one-out needs at least 3",
                  prepare_dataset, "d", entry, tmp_path, tmp_path, tmp_path / "out")


def test_missing_data_directory(tmp_path):
    entry = {"source": "sequences", "file": "beauty/Beauty.txt"}
    fails_cleanly(tmp_path, r"config key 'data_dir': folder '.*nowhere' does not exist",
                  prepare_dataset, "beauty", entry, tmp_path / "nowhere", tmp_path, tmp_path / "out")


def test_missing_data_file(tmp_path):
    entry = {"source": "sequences", "file": "Beauty.txt"}
    fails_cleanly(tmp_path, r"file '.*Beauty.txt' not found \(config keys 'data_dir' and 'catalog.beauty.file'\)",
                  prepare_dataset, "beauty", entry, tmp_path, tmp_path, tmp_path / "out")


def test_dataset_without_source(tmp_path):
    fails_cleanly(tmp_path, r"config key 'catalog.mine': 'source' is a required property",
                  prepare_dataset, "mine", {"file": "x.txt"}, tmp_path, tmp_path, tmp_path / "out")


def test_dataset_without_file(tmp_path):
    fails_cleanly(tmp_path, r"config key 'catalog.mine.file': source 'sequences' needs 'file'",
                  prepare_dataset, "mine", {"source": "sequences"}, tmp_path, tmp_path, tmp_path / "out")


def test_unknown_source(tmp_path):
    fails_cleanly(tmp_path, r"config key 'catalog.mine.source': 'movielens-20m' is not one of",
                  prepare_dataset, "mine", {"source": "movielens-20m", "file": "x"}, tmp_path, tmp_path,
                  tmp_path / "out")


def test_expected_statistics_differ(tmp_path):
    (tmp_path / "data.txt").write_text("1 1 2 3\n2 2 3 4 5\n")
    entry = {"source": "sequences", "file": "data.txt", "expected": {"users": 2, "items": 6, "interactions": 9}}
    message = fails_cleanly(tmp_path, r"statistics differ from catalog.d.expected", prepare_dataset, "d", entry,
                            tmp_path, tmp_path, tmp_path / "out")
    assert "items: expected 6, found 5" in message and "interactions: expected 9, found 7" in message
    assert "users" not in message.split("expected:")[-1]  # only the numbers that differ


def test_changed_checksum(tmp_path):
    (tmp_path / "data.txt").write_text("1 1 2 3\n2 2 3 4 5\n")
    good = sha256_file(tmp_path / "data.txt")
    (tmp_path / "data.txt").write_text("1 1 2 3\n2 2 3 4 6\n")  # one byte changed
    entry = {"source": "sequences", "file": "data.txt", "sha256": good}
    message = fails_cleanly(tmp_path, r"data.txt has sha256", prepare_dataset, "d", entry, tmp_path, tmp_path,
                            tmp_path / "out")
    assert sha256_file(tmp_path / "data.txt") in message and good in message and "catalog.d.sha256" in message


def test_malformed_raw_source_line(tmp_path):
    (tmp_path / "reviews.json").write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"oops"\n')
    fails_cleanly(tmp_path, r"reviews.json:2: not a JSON object", prepare_dataset, "b",
                  {"source": "amazon-2014", "file": "reviews.json"}, tmp_path, tmp_path, tmp_path / "out")


def test_yelp_not_downloaded(tmp_path):
    entry = {"source": "yelp", "file": "yelp_academic_dataset_review.json", "year_from": 2019, "year_to": 2019}
    message = fails_cleanly(tmp_path, r"Download the Yelp Open Dataset", prepare_dataset, "yelp-raw", entry,
                            tmp_path, tmp_path / "raw", tmp_path / "out")
    assert str(tmp_path / "raw" / "yelp_academic_dataset_review.json") in message


def test_changed_raw_archive(tmp_path):
    (tmp_path / "ml-1m.zip").write_bytes(b"PK not really")
    entry = {"source": "movielens-1m", "file": "ml-1m.zip", "archive_sha256": "a" * 64}
    message = fails_cleanly(tmp_path, r"ml-1m.zip has sha256 [0-9a-f]{64}, catalog.ml.archive_sha256 declares a{64}",
                            prepare_dataset, "ml", entry, tmp_path, tmp_path, tmp_path / "out")
    assert sha256_file(tmp_path / "ml-1m.zip") in message


def test_directory_in_place_of_the_data_file(tmp_path):
    (tmp_path / "data.txt").mkdir()
    fails_cleanly(tmp_path, r"dataset 'd': '.*data.txt' is a directory, not a data file \(config keys 'data_dir' and "
                            r"'catalog.d.file'\)", prepare_dataset, "d", {"source": "sequences", "file": "data.txt"},
                  tmp_path, tmp_path, tmp_path / "out")
    with pytest.raises(P2RecError, match=r"data.txt: is a directory, not a data file"):  # the reader alone too
        read_standard_file(tmp_path / "data.txt")


def test_unreadable_data_file(tmp_path, monkeypatch):
    """Simulated (root reads a chmod-000 file anyway): opening the file fails with EACCES."""
    (tmp_path / "data.txt").write_text("1 1 2 3\n")
    real_open = open

    def no_access(path, *args, **kwargs):
        if str(path).endswith("data.txt"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_access)
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: no_access(self))
    fails_cleanly(tmp_path, r"dataset 'd': cannot read '.*data.txt' \(Permission denied; config keys 'data_dir' and "
                            r"'catalog.d.file'\)", prepare_dataset, "d", {"source": "sequences", "file": "data.txt"},
                  tmp_path, tmp_path, tmp_path / "out")
    with pytest.raises(P2RecError, match=r"data.txt: cannot read the data file \(Permission denied\)"):
        read_standard_file(tmp_path / "data.txt")


PLAIN = b"1 1 2 3\n2 2 3 4\n3 1 3 4\n"
ACCEPTED_LAYOUTS = [
    pytest.param(b"\xef\xbb\xbf" + PLAIN, id="byte-order-mark"),
    pytest.param(PLAIN.replace(b"\n", b"\r\n"), id="crlf"),
    pytest.param(PLAIN.replace(b"\n", b"\r"), id="cr"),
    pytest.param(b"1\t1 2\t 3\n2 2\t\t3 4\n3 1 3 4", id="tabs-and-spaces-no-final-newline"),
    pytest.param(b"1 1 2 3\n\n  \t\n2 2 3 4\n\n3 1 3 4\n\n", id="blank-lines-in-the-middle"),
]


@pytest.mark.parametrize("content", ACCEPTED_LAYOUTS)
def test_accepted_layouts_prepare_as_the_plain_file(tmp_path, content):
    """Documented acceptances: the prepared files equal those of the plain file (only the input checksum differs)."""
    (tmp_path / "plain.txt").write_bytes(PLAIN)
    (tmp_path / "data.txt").write_bytes(content)
    plain = prepare_dataset("d", {"source": "sequences", "file": "plain.txt"}, tmp_path, tmp_path, tmp_path / "a")
    other = prepare_dataset("d", {"source": "sequences", "file": "data.txt"}, tmp_path, tmp_path, tmp_path / "b")
    assert (tmp_path / "a" / "sequences.txt").read_bytes() == (tmp_path / "b" / "sequences.txt").read_bytes() == PLAIN
    assert {k: v for k, v in plain.items() if k != "input_sha256"} == {k: v for k, v in other.items()
                                                                      if k != "input_sha256"}
    assert other["input_sha256"] == sha256_file(tmp_path / "data.txt")  # the bytes as they are on disk


SPARSE = "1 5 7 1000000000\n2 7 5 9 12\n3 12 1000000000 5 9\n"


def test_sparse_item_ids_are_renumbered_with_a_map(tmp_path):
    (tmp_path / "data.txt").write_text(SPARSE)
    stats = prepare_dataset("d", {"source": "sequences", "file": "data.txt"}, tmp_path, tmp_path, tmp_path / "out")
    assert stats["items"] == stats["items_seen"] == 5  # never an item table of a billion rows
    assert stats["item_ids"] == {"renumbered": True, "order": "first appearance", "map": "item_map.csv",
                                 "raw_distinct": 5, "raw_max": 1000000000}
    assert (tmp_path / "out" / "sequences.txt").read_text() == "1 1 2 3\n2 2 1 4 5\n3 5 3 1 4\n"
    assert (tmp_path / "out" / "item_map.csv").read_text() == \
        "raw_item_id,item_id\n5,1\n7,2\n1000000000,3\n9,4\n12,5\n"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["item_ids"]["map"] == "item_map.csv"


def test_sparse_item_ids_refused_on_request(tmp_path):
    (tmp_path / "data.txt").write_text(SPARSE)
    entry = {"source": "sequences", "file": "data.txt", "sparse_ids": "error"}
    fails_cleanly(tmp_path, r"dataset 'd': .*data.txt: item ids are not 1..N \(5 distinct ids, the largest 1000000000\); "
                            r"config key 'catalog.d.sparse_ids' is 'error'", prepare_dataset, "d", entry, tmp_path,
                  tmp_path, tmp_path / "out")


def test_ids_already_1_to_n_are_kept_byte_for_byte(tmp_path):
    """Every id of 1..N used (in any order): nothing renumbered, no map, stats.json as before; a map left by an
    earlier preparation of a sparse file in the same folder goes."""
    (tmp_path / "data.txt").write_text(SPARSE)
    prepare_dataset("d", {"source": "sequences", "file": "data.txt"}, tmp_path, tmp_path, tmp_path / "out")
    dense = "7 3 1 2\n2 2 3 4 5\n5 5 1 4\n"
    (tmp_path / "data.txt").write_text(dense)
    stats = prepare_dataset("d", {"source": "sequences", "file": "data.txt", "sparse_ids": "error"}, tmp_path,
                            tmp_path, tmp_path / "out")
    assert (tmp_path / "out" / "sequences.txt").read_text() == dense
    assert "item_ids" not in stats and stats["items"] == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sequences.txt", "stats.json", "truth.tsv"]


def test_gap_left_by_dropped_short_users_is_renumbered(tmp_path):
    (tmp_path / "data.txt").write_text("1 1 2 3\n2 4 5\n3 3 6 1\n")  # user 2 dropped: items 4 and 5 unused
    stats = prepare_dataset("d", {"source": "sequences", "file": "data.txt"}, tmp_path, tmp_path, tmp_path / "out")
    assert stats["dropped_short_users"] == 1 and stats["items"] == 4 and stats["item_ids"]["raw_max"] == 6
    assert (tmp_path / "out" / "sequences.txt").read_text() == "1 1 2 3\n3 3 4 1\n"


# ------------------------------------------------------------------------------------ configuration

CONFIG_CASES = [
    pytest.param({"trian": {}}, r"config key '<top level>': Additional properties are not allowed \('trian'",
                 id="unknown-top-level-key"),
    pytest.param({"train": {"epoch": 3}}, r"config key 'train': Additional properties are not allowed \('epoch'",
                 id="unknown-nested-key"),
    pytest.param({"train": {"epochs": "ten"}}, r"config key 'train.epochs': 'ten' is not of type 'integer'",
                 id="wrong-type"),
    pytest.param({"seeds": [1, -2]}, r"config key 'seeds\[1\]': -2 is less than the minimum of 0", id="negative-seed"),
    pytest.param({"datasets": ["beuty"]}, r"config key 'datasets\[0\]': unknown dataset 'beuty'",
                 id="unknown-dataset"),
    pytest.param({"backbones": ["sasrec", "sasrek"]}, r"config key 'backbones\[1\]': unknown backbone 'sasrek'",
                 id="unknown-backbone"),
    pytest.param({"variants": ["p3rec"]}, r"config key 'variants\[0\]': unknown variant 'p3rec'",
                 id="unknown-variant"),
    pytest.param({"train": {"max_len": 0}}, r"config key 'train.max_len': 0 is less than the minimum of 1",
                 id="max-len-below-1"),
    pytest.param({"catalog": {"synthetic": {"source": "synthetic", "train": {"max_len": 0}}}},
                 r"config key 'catalog.synthetic.train.max_len': 0 is less than the minimum of 1",
                 id="max-len-below-1-in-dataset-override"),
    pytest.param({"backbone_params": {"sasrec": {"num_layer": 2}}},
                 r"config key 'backbone_params.sasrec': unknown parameter\(s\) \['num_layer'\]",
                 id="unknown-backbone-parameter"),
    pytest.param({"backbone_params": {"sasrec": {"norm": "middle"}}},
                 r"config key 'backbone_params.sasrec.norm': 'pre' or 'post', got 'middle'",
                 id="bad-backbone-parameter-value"),
    pytest.param({"backbone_params": {"caser": {"window": 0}}},
                 r"config key 'backbone_params.caser': need window >= 1", id="bad-caser-window"),
    pytest.param({"backbone_params": {"sasrec": {"num_heads": 3}}},
                 r"config key 'backbone_params.sasrec.num_heads': must divide train.hidden \(64\), got 3",
                 id="heads-not-dividing-hidden"),
    pytest.param({"backbone_params": {"sasrec": {"activation": "tanh"}}},
                 r"config key 'backbone_params.sasrec.activation': one of \['gelu', 'relu'\], got 'tanh'",
                 id="unknown-sasrec-activation"),
    pytest.param({"train": {"targets": 0}}, r"config key 'train.targets': 0 is less than the minimum of 1",
                 id="targets-below-one"),
    pytest.param({"catalog": {"synthetic": {"file": "x.txt"}}},
                 r"config key 'catalog.synthetic': 'source' is a required property", id="catalog-entry-without-source"),
]

NAME_CASES = [
    pytest.param({"catalog": {"../evil": {"source": "sequences", "file": "x.txt"}}, "datasets": ["../evil"]},
                 r"config key 'catalog': '../evil' is not a safe dataset name \(it names folders", id="dataset-name-with-dotdot"),
    pytest.param({"catalog": {"a/b": {"source": "synthetic"}}},
                 r"config key 'catalog': 'a/b' is not a safe dataset name", id="dataset-name-with-a-separator"),
    pytest.param({"datasets": [".hidden"]}, r"config key 'datasets\[0\]': '.hidden' is not a safe dataset name",
                 id="dataset-name-starting-with-a-dot"),
    pytest.param({"variant_catalog": {"x/../../y": {"item_init": None}}, "variants": ["x/../../y"]},
                 r"config key 'variant_catalog': 'x/../../y' is not a safe variant name", id="variant-name-with-dotdot"),
    pytest.param({"backbones": ["sasrec/.."]}, r"config key 'backbones\[0\]': 'sasrec/..' is not a safe backbone name",
                 id="backbone-name-with-a-separator"),
]


@pytest.mark.parametrize("override, message", CONFIG_CASES)
def test_bad_configuration(override, message):
    config = base_config()
    config.update(copy.deepcopy(override))
    with pytest.raises(P2RecError, match=message):
        validate_config(config)


@pytest.mark.parametrize("override, message", NAME_CASES)
def test_unsafe_names(override, message):
    """Checked as the Snakefile and check-config do, before the schema validation."""
    config = base_config()
    config.update(copy.deepcopy(override))
    with pytest.raises(P2RecError, match=message):
        check_names(config)


def test_unsafe_names_are_each_named_and_safe_ones_pass():
    config = base_config()
    config.update(catalog={**config["catalog"], "../evil": {"source": "synthetic"}}, datasets=["synthetic", "../evil"])
    with pytest.raises(P2RecError) as err:
        check_names(config)
    assert str(err.value).splitlines()[1:] == [
        f"  config key '{key}': '../evil' is not a safe dataset name (it names folders: letters, digits, '_', '-' "
        f"and '.', starting with a letter or digit, no '..')" for key in ("catalog", "datasets[1]")]
    with pytest.raises(P2RecError, match=r"config key 'catalog': '../evil' is not a safe dataset name"):
        prepare_dataset("../evil", {"source": "synthetic"}, ".", ".", "unused")  # the CLI's way in too
    ok = base_config()
    ok["catalog"]["My_data-2.v1"] = {"source": "synthetic"}
    ok["datasets"] = ["My_data-2.v1"]
    check_names(ok)  # letters, digits, '_', '-', '.' are fine
    validate_config(ok)


# ----------------------------------------------------------------------- LLM budget of a dataset of one's own


def test_default_instance_budget_is_the_number_of_users_unless_set():
    from p2rec.llm.settings import USERS_BUDGET, sft_settings

    config = base_config()
    config["catalog"]["mine"] = {"source": "sequences", "file": "/x/mine.txt"}
    config = validate_config(config)
    assert sft_settings(config, "mine", "instance")["instance"] == {"max_samples": USERS_BUDGET, "sample_seed": 0}
    # the committed datasets keep their explicit overrides (the same rule, written out)
    assert {d: sft_settings(config, d, "instance")["instance"]["max_samples"]
            for d in ("synthetic", "beauty", "yelp", "ml-1m")} == {"synthetic": 500, "beauty": 22363, "yelp": 30431,
                                                                   "ml-1m": 6040}
    explicit = copy.deepcopy(config)
    explicit["llm"]["instance"]["max_samples"] = 1000  # a global integer applies to every dataset without override
    assert sft_settings(explicit, "mine", "instance")["instance"]["max_samples"] == 1000
    explicit["llm"]["dataset_overrides"]["mine"] = {"instance": {"max_samples": None}}  # explicit: the full epoch
    assert sft_settings(explicit, "mine", "instance")["instance"]["max_samples"] is None


def test_default_budget_resolved_from_the_data_and_a_large_cost_logged(tmp_path, capsys):
    from p2rec.llm.budget import LARGE_S, MEASURED, plan_sft, sft_tokens

    rng = np.random.default_rng(0)
    lines = [f"{u} " + " ".join(map(str, rng.permutation(np.arange(1, 401))[:30])) for u in range(1, 4001)]
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    settings = {"max_items": 20, "epochs": 1, "prompt": {"mode": "soft"},
                "instance": {"max_samples": "users", "sample_seed": 0}}
    resolved = plan_sft("instance", tmp_path / "data.txt", settings)
    assert resolved["instance"] == {"max_samples": 4000, "sample_seed": 0} and settings["instance"]["max_samples"] == "users"
    log = capsys.readouterr().err
    assert "p2rec sft: instance-level budget: 4,000 instances per epoch, as many as the user-level epoch has users" in log
    assert "estimated cost" not in log  # 4,000 instances of ~36 tokens: under LARGE_S
    plan_sft("instance", tmp_path / "data.txt", dict(settings, instance={"max_samples": None, "sample_seed": 0}))
    log = capsys.readouterr().err  # the full epoch: 4,000 x 27 prefixes
    samples, tokens = sft_tokens("instance", np.full(4000, 28), 20, None)
    assert samples == 108000 and tokens / MEASURED["instance"][0] > LARGE_S
    assert "budget" not in log and (f"p2rec sft: estimated cost of instance-level SFT: 108,000 samples x 1 epoch(s), "
                                    f"about {tokens:,.0f} prompt tokens") in log
    assert MEASURED["instance"][1] in log


def test_estimates_use_the_committed_measurements():
    """The throughput and prompt length the estimates use are the committed Beauty timings' own numbers."""
    from p2rec.llm.budget import FIXED_TOKENS, MEASURED

    for stage, (tokens_per_s, path) in MEASURED.items():
        timing = json.loads((REPO / path).read_text())
        assert round(timing["tokens_per_s"], 2) == tokens_per_s, stage
        if "prompt" in timing:
            assert timing["prompt"]["prefix_tokens"] + timing["prompt"]["suffix_tokens"] == FIXED_TOKENS


# ------------------------------------------------------------------------------------- training stage


def test_bad_training_settings_name_the_config_key(tmp_path, dataset):
    settings = copy.deepcopy(SETTINGS)
    settings["train"]["max_len"] = 0
    fails_cleanly(tmp_path, r"config key 'train.max_len': 0 is less than the minimum of 1", run_training, dataset,
                  settings, 1, tmp_path / "run")
    settings = dict(copy.deepcopy(SETTINGS), backbone="sasrek")
    fails_cleanly(tmp_path, r"config key 'backbones': unknown backbone 'sasrek'", run_training, dataset, settings, 1,
                  tmp_path / "run")


def test_malformed_training_data(tmp_path):
    (tmp_path / "sequences.txt").write_text("1 1 2 3\n2 2 3 oops\n")
    fails_cleanly(tmp_path, r"sequences.txt:2: 'oops' is not an integer id", run_training, tmp_path / "sequences.txt",
                  SETTINGS, 1, tmp_path / "run")


def test_sampled_negatives_larger_than_the_catalogue(tmp_path, dataset):
    settings = copy.deepcopy(SETTINGS)
    settings["eval"].update(mode="sampled", n_sampled=10_000)
    fails_cleanly(tmp_path, r"config key 'eval.n_sampled': user row 0: only \d+ unseen items, 10000 negatives asked",
                  run_training, dataset, settings, 1, tmp_path / "run")


@pytest.mark.parametrize("kind", ["wrong-rows", "wrong-columns", "one-dimensional"])
def test_item_embeddings_of_the_wrong_shape(tmp_path, dataset, kind):
    n, d = num_items(dataset) + 1, SETTINGS["train"]["hidden"]
    shape = {"wrong-rows": (n - 1, d), "wrong-columns": (n, d + 1), "one-dimensional": (n * d,)}[kind]
    np.save(tmp_path / "init.npy", np.zeros(shape, dtype=np.float32))
    fails_cleanly(tmp_path, rf"init.npy: item-embedding shape \({shape[0]},.*\), expected \({n}, {d}\)", run_training,
                  dataset, SETTINGS, 1, tmp_path / "run", item_init=tmp_path / "init.npy")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_item_embeddings_not_finite(tmp_path, dataset, value):
    table = np.random.default_rng(0).normal(size=(num_items(dataset) + 1, SETTINGS["train"]["hidden"]))
    table[3, 1] = value
    table[5, 0] = value
    np.save(tmp_path / "init.npy", table.astype(np.float32))
    fails_cleanly(tmp_path, r"init.npy: 2 row\(s\) contain NaN or infinite values", run_training, dataset, SETTINGS, 1,
                  tmp_path / "run", item_init=tmp_path / "init.npy")


def test_item_embeddings_not_an_array(tmp_path, dataset):
    (tmp_path / "init.npy").write_text("0.1 0.2\n")
    fails_cleanly(tmp_path, r"init.npy: not a readable .npy array", run_training, dataset, SETTINGS, 1,
                  tmp_path / "run", item_init=tmp_path / "init.npy")


def test_truncated_checkpoint(tmp_path, dataset):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {"w": torch.zeros(1000)}, "optimizer": {}, "state": {}}, run / "checkpoint.pt")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    fails_cleanly(tmp_path, r"checkpoint.pt: unreadable checkpoint .*delete it to start the run over", run_training,
                  dataset, SETTINGS, 1, run)


# ----------------------------------------------------------------------------------- output folders


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable. Permission bits bind normal users; root ignores them, so as root the
    folder is made immutable (chattr +i, CAP_LINUX_IMMUTABLE) instead."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "chmod 555"
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    made = chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0
    if not made:
        pytest.skip("running as root without chattr +i support: cannot make a folder read-only here "
                    "(test_output_path_under_a_file covers the unwritable output path)")
    try:
        yield "chattr +i"
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_read_only_output_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        with pytest.raises(P2RecError, match=r"out/sequences.txt: cannot write in .*out \((Permission denied|"
                                             r"Operation not permitted)\)"):
            prepare_dataset("synthetic", {"source": "synthetic", "synthetic": {"users": 30, "items": 20}}, tmp_path,
                            tmp_path, out)
        assert tree(out) == []


def test_output_path_under_a_file(tmp_path):
    (tmp_path / "results").write_text("a regular file where a folder should be\n")
    fails_cleanly(tmp_path, r"results/data: cannot create the output folder", prepare_dataset, "synthetic",
                  {"source": "synthetic", "synthetic": {"users": 30, "items": 20}}, tmp_path, tmp_path,
                  tmp_path / "results" / "data")


def test_full_output_directory(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real_write_text = pathlib.Path.write_text

    def half_then_enospc(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)  # a partial write really happens
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_enospc)
    fails_cleanly(out, r"out/sequences.txt: cannot write \(No space left on device\); nothing was written",
                  prepare_dataset, "synthetic", {"source": "synthetic", "synthetic": {"users": 30, "items": 20}},
                  tmp_path, tmp_path, out)


# -------------------------------------------------------------------------- the same through the CLI


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2rec", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def assert_cli_error(proc: subprocess.CompletedProcess, stage: str, *fragments: str, one_line: bool = True) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"p2rec {stage}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    if one_line:
        assert proc.stderr.count("\n") == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_cli_prepare_bad_entry_and_bad_line(tmp_path):
    with leaves_nothing(tmp_path):
        proc = cli("prepare", "--name", "mine", "--entry", '{"source": "sequences", "file": 3}', "--out-dir", "out",
                   cwd=tmp_path)
    assert_cli_error(proc, "prepare", "config key 'catalog.mine.file': 3 is not of type 'string'")
    (tmp_path / "data.txt").write_text("1 2 3 4\n2 3 x 5\n")
    with leaves_nothing(tmp_path):
        proc = cli("prepare", "--name", "mine", "--entry", '{"source": "sequences", "file": "data.txt"}',
                   "--data-dir", ".", "--out-dir", "out", cwd=tmp_path)
    assert_cli_error(proc, "prepare", "data.txt:2: 'x' is not an integer id")


def test_cli_prepare_user_data_cases(tmp_path):
    """Each through `python -m p2rec prepare`: one line, exit 2, nothing written; or a documented acceptance."""
    (tmp_path / "huge.txt").write_text("1 2 3 4\n2 3 18446744073709551616 5\n")
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "sparse.txt").write_text(SPARSE)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + PLAIN.replace(b"\n", b"\r\n"))
    cases = [("d", "huge.txt", {}, "huge.txt:2: item id 18446744073709551616 is out of the supported range"),
             ("d", "folder.txt", {}, "folder.txt' is a directory, not a data file"),
             ("d", "sparse.txt", {"sparse_ids": "error"}, "config key 'catalog.d.sparse_ids' is 'error'"),
             ("../evil", "bom.txt", {}, "config key 'catalog': '../evil' is not a safe dataset name")]
    for name, file, extra, message in cases:
        with leaves_nothing(tmp_path):
            proc = cli("prepare", "--name", name, "--entry", json.dumps({"source": "sequences", "file": file, **extra}),
                       "--data-dir", ".", "--out-dir", "out", cwd=tmp_path)
        assert_cli_error(proc, "prepare", message)
    proc = cli("prepare", "--name", "d", "--entry", '{"source": "sequences", "file": "bom.txt"}', "--data-dir", ".",
               "--out-dir", "out", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"users": 3, "items": 4, "interactions": 9}
    assert (tmp_path / "out" / "sequences.txt").read_bytes() == PLAIN


def test_cli_train_bad_item_table(tmp_path, dataset):
    np.save(tmp_path / "init.npy", np.full((num_items(dataset) + 1, 8), np.nan, dtype=np.float32))
    with leaves_nothing(tmp_path):
        proc = cli("train", "--data", str(dataset), "--settings", json.dumps(SETTINGS), "--seed", "1", "--out-dir",
                   "run", "--item-init", "init.npy", "--no-progress", cwd=tmp_path)
    assert_cli_error(proc, "train", "init.npy:", "contain NaN or infinite values")


def test_cli_check_config_typo(tmp_path):
    config = base_config()
    config["train"]["lr"] = "fast"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = cli("check-config", "config.yaml", cwd=tmp_path)
    assert_cli_error(proc, "check-config", "config key 'train.lr': 'fast' is not of type 'number'", one_line=False)


def test_snakemake_dry_run_of_a_copied_workflow_names_the_keys(tmp_path):
    """A temporary copy of the workflow with two typos: the dry run fails at parse time naming both keys."""
    for name in ("Snakefile", "rules"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    config = base_config()
    config["pretrain"]["backbone"] = "sasrek"
    config["catalog"]["synthetic"]["train"] = {"max_len": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with leaves_nothing(tmp_path / "rules"):
        proc = run_snakemake(tmp_path, "-n", "--cores", "1", snakefile=tmp_path / "Snakefile", timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key 'pretrain.backbone': unknown backbone 'sasrek'" in output, output[-2000:]
    assert "config key 'catalog.synthetic.train.max_len': 0 is less than the minimum of 1" in output
    assert not (tmp_path / "results").exists()


def test_snakemake_dry_run_refuses_an_unsafe_dataset_name(tmp_path):
    """Before: `snakemake -n` planned work/main/data/../evil/sequences.txt. Now the Snakefile refuses the name."""
    for name in ("Snakefile", "rules"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    config = base_config()
    config["catalog"]["../evil"] = {"source": "sequences", "file": "x.txt"}
    config["datasets"] = ["../evil"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", snakefile=tmp_path / "Snakefile", timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key 'catalog': '../evil' is not a safe dataset name" in output, output[-2000:]
    assert "config key 'datasets[0]': '../evil' is not a safe dataset name" in output
    assert "data/../evil" not in output and not (tmp_path / "work").exists() and not (tmp_path / "evil").exists()
