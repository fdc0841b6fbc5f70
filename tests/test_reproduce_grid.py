"""scripts/reproduce_grid.py: which runs it queues (dry run), and that runs made elsewhere are skipped."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "reproduce_grid.py"


def _dry_run(tmp_path, *extra):
    data = tmp_path / "data" / "synthetic"
    data.mkdir(parents=True, exist_ok=True)
    (data / "sequences.txt").write_text("1 1 2 3 4\n2 2 3 4 5\n", encoding="utf-8")
    cmd = [sys.executable, str(SCRIPT), "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
           "--datasets", "synthetic", "--backbones", "sasrec", "gru4rec", "--losses", "ce", "bce",
           "--seeds", "1", "2", "--dry-run", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)


def test_dry_run_lists_every_cell_seed_major(tmp_path):
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("8 runs to do")
    assert lines[1:5] == ["ce/synthetic/sasrec/none/seed1", "bce/synthetic/sasrec/none/seed1",
                          "ce/synthetic/gru4rec/none/seed1", "bce/synthetic/gru4rec/none/seed1"]
    assert not (tmp_path / "out").exists()


def test_runs_done_elsewhere_are_skipped_for_their_loss_only(tmp_path):
    elsewhere = tmp_path / "runs-ce"
    for backbone in ("sasrec", "gru4rec"):
        run = elsewhere / "synthetic" / backbone / "none" / "seed1"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text("{}", encoding="utf-8")
    # a folder without metrics.json (an unfinished run) does not count as done
    (elsewhere / "synthetic" / "sasrec" / "none" / "seed2").mkdir(parents=True)
    result = _dry_run(tmp_path, "--done", f"ce={elsewhere}")
    assert result.returncode == 0, result.stderr
    queued = result.stdout.splitlines()[1:]
    assert len(queued) == 6
    assert "ce/synthetic/sasrec/none/seed1" not in queued and "ce/synthetic/gru4rec/none/seed1" not in queued
    assert "bce/synthetic/sasrec/none/seed1" in queued and "ce/synthetic/sasrec/none/seed2" in queued


def test_bad_done_argument_is_named(tmp_path):
    result = _dry_run(tmp_path, "--done", f"mse={tmp_path}")
    assert result.returncode != 0
    assert "--done 'mse=" in result.stderr
    result = _dry_run(tmp_path, "--done", f"ce={tmp_path / 'absent'}")
    assert result.returncode != 0 and "absent" in result.stderr
