"""Interruption and atomic outputs of backbone training.

A ``python -m p2rec train`` process is SIGKILLed once a checkpoint exists; the rerun must resume from that
epoch (not start over) and end with exactly the metrics of an uninterrupted run (CPU, same seed). A stage
that dies halfway must leave nothing a later stage or Snakemake could take for a result.
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from p2rec import P2RecError
from p2rec import io as p2io
from p2rec.workflow.config import check_settings
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.models.registry import build_backbone
from p2rec.training.runner import run_training
from p2rec.training.trainer import seed_everything, train_backbone

SETTINGS = {
    "backbone": "sasrec",
    "model": {"num_layers": 1, "num_heads": 1, "dropout": 0.2},
    "train": {"hidden": 16, "max_len": 20, "batch_size": 32, "epochs": 40, "patience": 100, "device": "cpu",
              "threads": 1, "checkpoint_every": 1},
    "eval": {"ks": [5, 10, 20]},
}
RUN_FILES = {"metrics.json", "ranks.csv.gz", "timing.json", "config.json", "history.csv"}


def p2rec(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "p2rec", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def train_args(data: Path, out: Path, settings: dict = SETTINGS) -> list[str]:
    return ["train", "--data", str(data), "--settings", json.dumps(settings), "--seed", "3", "--out-dir", str(out),
            "--no-progress"]


def finish(proc: subprocess.Popen, timeout: int = 240) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared")
    entry = json.dumps({"source": "synthetic", "synthetic": {"seed": 5, "users": 300, "items": 120, "categories": 6}})
    finish(p2rec("prepare", "--name", "synthetic", "--entry", entry, "--out-dir", str(folder), cwd=folder))
    return folder / "sequences.txt"


def history_numbers(path: Path) -> list[dict]:
    """history.csv without the wall-clock columns."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


def logged_epochs(log: str) -> list[int]:
    """Epoch numbers of the per-epoch lines of a run log."""
    total = SETTINGS["train"]["epochs"]
    return [int(n) for n in re.findall(rf"^epoch (\d+)/{total}: loss [\d.]+, valid ndcg@10 [\d.]+ \(best ", log, re.M)]


def test_sigkill_during_training_then_resume_gives_the_uninterrupted_result(tmp_path, data):
    started = time.perf_counter()
    reference = tmp_path / "reference"
    _, reference_err = finish(p2rec(*train_args(data, reference), cwd=tmp_path))
    # the run log (--no-progress, as in the workflow) says every epoch on its own line
    assert logged_epochs(reference_err) == list(range(1, SETTINGS["train"]["epochs"] + 1)), reference_err[-2000:]
    reference_s = time.perf_counter() - started

    run = tmp_path / "interrupted"
    proc = p2rec(*train_args(data, run), cwd=tmp_path)
    deadline = time.monotonic() + 180
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before writing a checkpoint: " + proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # killed halfway: no result file, only the checkpoint (and perhaps a temporary file of a checkpoint write)
    left = {p.name for p in run.iterdir()}
    assert not left & RUN_FILES, f"a killed run left result files: {left & RUN_FILES}"
    assert all(name == "checkpoint.pt" or (name.startswith(".checkpoint.pt.") and ".tmp" in name) for name in left)

    resumed_started = time.perf_counter()
    out, err = finish(p2rec(*train_args(data, run), cwd=tmp_path))
    resumed_s = time.perf_counter() - resumed_started
    match = re.search(r"resuming from .*checkpoint.pt after epoch (\d+)", err)
    assert match, f"the rerun did not resume: {err[-2000:]}"
    epoch = int(match.group(1))
    assert 0 < epoch < SETTINGS["train"]["epochs"], epoch
    assert logged_epochs(err) == list(range(epoch + 1, SETTINGS["train"]["epochs"] + 1)), err[-2000:]

    want = json.loads((reference / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert got == want  # valid + test metrics, best epoch, epochs: exactly equal
    assert got["epochs"] == SETTINGS["train"]["epochs"]
    assert gzip.decompress((run / "ranks.csv.gz").read_bytes()) == gzip.decompress(
        (reference / "ranks.csv.gz").read_bytes())
    assert history_numbers(run / "history.csv") == history_numbers(reference / "history.csv")
    assert {p.name for p in run.iterdir()} == RUN_FILES  # checkpoint and temporary files are gone
    # the resumed run's timing covers the epochs before the kill too (they are in its history)
    timing = json.loads((run / "timing.json").read_text())
    history = pd.read_csv(run / "history.csv")
    before = history[history["epoch"] <= epoch]
    assert timing["resumed_after_epoch"] == epoch
    assert timing["seconds_before_resume"] == pytest.approx((before["train_seconds"] + before["eval_seconds"]).sum())
    assert timing["total_seconds"] >= history["train_seconds"].sum() + history["eval_seconds"].sum()
    assert "resumed_after_epoch" not in json.loads((reference / "timing.json").read_text())
    print(f"\ninterruption: uninterrupted run {reference_s:.1f} s; killed after the checkpoint of epoch {epoch}; "
          f"resumed run {resumed_s:.1f} s; test ndcg@10 {got['test']['ndcg@10']:.6f} in both")


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path, data, capfd):
    """A checkpoint left by a killed run with other settings (here: another lr) is ignored, not resumed."""
    fast = dict(SETTINGS, train=dict(SETTINGS["train"], epochs=3))
    other = check_settings(dict(fast, train=dict(fast["train"], lr=0.01)))
    split = leave_one_out(read_sequences(data))
    seed_everything(3)
    model = build_backbone("sasrec", split.num_items, 16, 20, **other["model"])
    train_backbone(model, split, other, 3, checkpoint_path=tmp_path / "run" / "checkpoint.pt", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    capfd.readouterr()
    got = run_training(data, fast, 3, tmp_path / "run", progress=False)
    err = capfd.readouterr().err
    assert "ignoring" in err and "starting over" in err and "resuming" not in err
    assert got == run_training(data, fast, 3, tmp_path / "fresh", progress=False)


# ------------------------------------------------------------------------------------- atomic outputs


def _fast() -> dict:
    return dict(SETTINGS, train=dict(SETTINGS["train"], epochs=2))


def test_crash_while_writing_metrics_leaves_no_metrics_file(tmp_path, data, monkeypatch):
    """metrics.json is written last: a crash in the middle of writing it leaves no metrics.json and no
    temporary file, so neither Snakemake's output check nor the table stage can take the run for done."""
    real = p2io.write_text

    def dies_on_metrics(path, text):
        if Path(path).name == "metrics.json":
            with p2io.atomic_path(path) as tmp:
                tmp.write_text(text[: len(text) // 2], encoding="utf-8")  # half the file is on disk ...
                raise KeyboardInterrupt  # ... when the process is interrupted
        return real(path, text)

    monkeypatch.setattr(p2io, "write_text", dies_on_metrics)
    with pytest.raises(KeyboardInterrupt):
        run_training(data, _fast(), 3, tmp_path / "run", progress=False)
    left = {p.name for p in (tmp_path / "run").iterdir()}
    assert "metrics.json" not in left
    assert not [n for n in left if n.startswith(".")], left  # no temporary file
    # every file that is there is complete (written by rename), e.g. the ranks read in full
    assert gzip.decompress((tmp_path / "run" / "ranks.csv.gz").read_bytes()).startswith(b"user,rank\n")


def test_disk_full_while_checkpointing(tmp_path, data, monkeypatch):
    """ENOSPC during a checkpoint write: a clear error naming the file, the partial temporary file removed,
    no checkpoint and no result files."""
    real_save = torch.save

    def partial_then_enospc(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        Path(target).write_bytes(Path(target).read_bytes()[:100])  # a partial file is on disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", partial_then_enospc)
    with pytest.raises(P2RecError, match=r"run/checkpoint.pt: cannot write \(No space left on device\)"):
        run_training(data, _fast(), 3, tmp_path / "run", progress=False)
    assert list((tmp_path / "run").iterdir()) == []


def test_temporary_files_of_a_killed_attempt_are_removed_on_rerun(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".checkpoint.pt.k1l2.tmp").write_bytes(b"half a checkpoint")  # what a SIGKILL mid-write leaves
    run_training(data, _fast(), 3, run, progress=False)
    assert {p.name for p in run.iterdir()} == RUN_FILES
