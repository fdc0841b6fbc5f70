"""Shared fixtures: tiny datasets written to temporary files, the repo root, the standard data folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def standard_data_dir() -> Path:
    return Path(os.environ.get("P2REC_DATA_DIR", REPO.parent / "shared" / "data"))


def require_standard_data() -> Path:
    """The standard files; skipped visibly off this team's machines, but a failure in CI."""
    path = standard_data_dir()
    if not (path / "beauty" / "Beauty.txt").exists():
        if os.environ.get("CI"):
            pytest.fail(f"standard data not found under {path} (set P2REC_DATA_DIR)")
        pytest.skip(f"standard data not found under {path} (set P2REC_DATA_DIR)")
    return path


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def write_lines(tmp_path):
    def _write(lines, name="data.txt"):
        path = tmp_path / name
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def tiny_sequences():
    rng = np.random.default_rng(0)
    users = np.arange(1, 41)
    seqs = [rng.choice(np.arange(1, 31), size=rng.integers(5, 12), replace=False) for _ in users]
    return users, seqs


def run_snakemake(workdir: Path, *args: str, snakefile: Path | None = None, timeout: int = 900,
                  env: dict | None = None, drop_env: tuple = (), base_env: dict | None = None
                  ) -> subprocess.CompletedProcess:
    """The suite's workflow (or another Snakefile) run in ``workdir``, output captured: the one way tests call it.
    The job environment is ``base_env`` (default: this process's) less ``drop_env``, plus ``env``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile or REPO / "Snakefile"), "--directory", str(workdir),
           *args]
    full_env = {k: v for k, v in (os.environ if base_env is None else base_env).items() if k not in drop_env}
    full_env.update({"PYTHONUNBUFFERED": "1", "P2REC_GPUS": "", **(env or {})})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=full_env)


def work_path(workdir: Path, rel: str, experiment: str = "main") -> Path:
    """A working file of an experiment run in ``workdir`` (``<work_dir>/<experiment>/<rel>``)."""
    return Path(workdir) / "work" / experiment / rel


def write_sequence_file(path: Path, users: int, items: int, seed: int = 3) -> Path:
    """A small standard-format file (``user item item ...``, 4-8 distinct items per user) at ``path``."""
    rng = np.random.default_rng(seed)
    lines = [f"{u} " + " ".join(map(str, rng.choice(np.arange(1, items + 1), size=rng.integers(4, 9), replace=False)))
             for u in range(1, users + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
