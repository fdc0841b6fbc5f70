"""Atomic file output and small I/O helpers.

Every stage writes through these helpers: data goes to a temporary name beside the target and is
renamed only on success, so a killed stage never leaves something a later stage could take for a result.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from p2rec import P2RecError

_UMASK = os.umask(0o022)  # read the process umask once (mkstemp would create 0600 files)
os.umask(_UMASK)


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents); failure is an error naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise P2RecError(f"{path}: cannot create the output folder ({err.strerror or err})") from err
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    On any failure the temporary file is removed; an OS error (read-only folder, disk full) becomes a
    :class:`~p2rec.P2RecError` naming ``target``.
    """
    target = Path(target)
    ensure_dir(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    except OSError as err:
        raise P2RecError(f"{target}: cannot write in {target.parent} ({err.strerror or err})") from err
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            if tmp_path.is_dir():
                shutil.rmtree(tmp_path)
            else:
                tmp_path.unlink()
        if isinstance(err, OSError):
            raise P2RecError(f"{target}: cannot write ({err.strerror or err}); nothing was written") from err
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``target`` (a directory) if the block succeeds."""
    target = Path(target)
    ensure_dir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise P2RecError(f"{target}: cannot write in {target.parent} ({err.strerror or err})") from err
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise P2RecError(f"{target}: cannot write ({err.strerror or err}); nothing was written") from err
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def markdown_rows(rows: list[dict], columns: list[str]) -> list[str]:
    """A markdown table (header, rule, one line per row) of ``columns`` of dict rows."""
    return ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|",
            *("| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows)]


def command_line(argv: list[str]) -> str:
    """The command that made a results file, quoted so it can be pasted back into a shell (``argv``: the
    arguments after ``python -m p2rec`` as the CLI was given them)."""
    return "python -m p2rec " + shlex.join(argv)


def write_table_files(prefix: str | os.PathLike, rows: list[dict], columns: list[str], markdown: str) -> None:
    """``<prefix>.csv`` (``columns`` of dict rows; other keys left out) and ``<prefix>.md`` (``markdown``)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    prefix = Path(prefix)
    write_text(prefix.with_name(prefix.name + ".csv"), buf.getvalue())
    write_text(prefix.with_name(prefix.name + ".md"), markdown)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """Load a .npy array (no pickles); a missing or unreadable file is an error that names it."""
    from p2rec import P2RecError

    path = Path(path)
    if not path.exists():
        raise P2RecError(f"{path}: {what} not found")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise P2RecError(f"{path}: not a readable .npy array ({type(err).__name__}: {err})") from None


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def write_ranks(path: str | os.PathLike, users: np.ndarray, ranks: np.ndarray) -> None:
    """Per-user ranks as gzip CSV (``user,rank``): compact and readable by pandas."""
    order = np.argsort(users, kind="stable")
    lines = ["user,rank"] + [f"{u},{r}" for u, r in zip(users[order], ranks[order])]
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as fh:
            fh.write("\n".join(lines) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
