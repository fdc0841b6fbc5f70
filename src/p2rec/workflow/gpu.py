"""GPU lease: give each job devices of its own.

Snakemake's ``--resources gpu=2`` limits how many GPU jobs run at once but never tells a job *which*
device it got, so two jobs land on the same one. A lease fixes that: it takes N free devices, each by a
non-blocking ``flock`` on one lock file per device, exports ``CUDA_VISIBLE_DEVICES`` for the job and holds
the locks for the job's whole life. The lock files are inherited by the job (the lease ``exec``s it), so
the kernel frees a device when the job ends in any way, SIGKILL included.

Where the devices come from, first match wins:

1. ``CUDA_VISIBLE_DEVICES`` preset by a scheduler (``SLURM_JOB_ID``, ``PBS_JOBID`` or ``LSB_JOBID`` in the
   environment, or ``P2REC_GPU_PRESET=1``): left exactly as it is, nothing is locked.
2. ``P2REC_GPUS`` (comma-separated ids, e.g. ``0,1``; empty = no GPU).
3. ``CUDA_VISIBLE_DEVICES`` preset by the user (no scheduler): the pool to lease from.
4. ``nvidia-smi --query-gpu=index --format=csv,noheader``.

With no device at all, or ``N = 0``, the job runs on the CPU (``CUDA_VISIBLE_DEVICES=""``) and says so.
Model code never writes ``CUDA_VISIBLE_DEVICES``; it uses whatever devices it sees.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from p2rec import P2RecError

ENV_GPUS = "P2REC_GPUS"
ENV_LOCK_DIR = "P2REC_GPU_LOCK_DIR"
ENV_PRESET = "P2REC_GPU_PRESET"
ENV_TIMEOUT = "P2REC_GPU_WAIT_TIMEOUT"
VISIBLE = "CUDA_VISIBLE_DEVICES"
SCHEDULER_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=index", "--format=csv,noheader")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def default_lock_dir(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(ENV_LOCK_DIR) or os.path.join(tempfile.gettempdir(), "p2rec-gpu-locks")


def parse_devices(text: str) -> list[str]:
    """``"0, 1,,2"`` -> ``["0", "1", "2"]``; ids may also be GPU UUIDs or MIG ids."""
    return [part.strip() for part in text.split(",") if part.strip()]


def scheduler_preset(env: Mapping[str, str]) -> str | None:
    """Why the preset CUDA_VISIBLE_DEVICES must be left alone, or None when the lease decides."""
    if VISIBLE not in env:
        return None
    flag = env.get(ENV_PRESET, "").strip().lower()
    if flag in _FALSE:
        return None
    if flag in _TRUE:
        return f"{ENV_PRESET}={env[ENV_PRESET]}"
    if flag:
        raise P2RecError(f"{ENV_PRESET}={env[ENV_PRESET]!r}: use 1 (trust a preset {VISIBLE}) or 0 (lease)")
    for name in SCHEDULER_VARS:
        if env.get(name):
            return f"{name}={env[name]}"
    return None


def query_nvidia_smi(run: Callable = subprocess.run) -> list[str] | None:
    """Device indices from nvidia-smi, or None where it is missing or fails."""
    try:
        proc = run(list(NVIDIA_SMI), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def discover_devices(env: Mapping[str, str], run: Callable = subprocess.run) -> tuple[list[str], str]:
    """The pool of device ids to lease from, and where it came from (for messages)."""
    if ENV_GPUS in env:
        return parse_devices(env[ENV_GPUS]), ENV_GPUS
    if VISIBLE in env:
        return parse_devices(env[VISIBLE]), f"preset {VISIBLE}"
    found = query_nvidia_smi(run)
    if found is None:
        return [], "nvidia-smi not available"
    return found, "nvidia-smi"


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def _open_lock(lock_dir: str, device: str) -> int:
    os.makedirs(lock_dir, exist_ok=True)
    try:  # shared by every user of the machine: world-writable, sticky, like /tmp
        if os.stat(lock_dir).st_uid == os.getuid():
            os.chmod(lock_dir, 0o1777)
    except OSError:
        pass
    path = os.path.join(lock_dir, _lock_name(device))
    old = os.umask(0)
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's file that we may only read: flock works on it too
            return os.open(path, os.O_RDONLY)
    finally:
        os.umask(old)


def _holder(lock_dir: str, device: str) -> str:
    try:
        with open(os.path.join(lock_dir, _lock_name(device)), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or "unknown holder"
    except OSError:
        return "unknown holder"


@dataclass
class Lease:
    """Devices held through open, flock-ed file descriptors (released when they close)."""

    devices: list[str]
    fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def keep_across_exec(self) -> None:
        for fd in self.fds:
            os.set_inheritable(fd, True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_acquire(pool: Sequence[str], n: int, lock_dir: str, note: str = "") -> Lease | None:
    """Take n devices of the pool now, all or none (never holds some while waiting for others)."""
    lease = Lease([])
    for device in pool:
        fd = _open_lock(lock_dir, device)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                continue
            raise
        lease.devices.append(device)
        lease.fds.append(fd)
        _write_holder(fd, note)
        if len(lease.devices) == n:
            return lease
    lease.release()
    return None


def _write_holder(fd: int, note: str) -> None:
    text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if note:
        text += f": {note}"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode("utf-8", "replace"), 0)
    except OSError:  # opened read-only (another user's lock file): the lock itself is what counts
        pass


def acquire(pool: Sequence[str], n: int, lock_dir: str, *, timeout: float | None = None, poll: float = 2.0,
            note: str = "", say: Callable[[str], None] | None = None,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Lease:
    """Take n free devices, waiting (with a message now and then) while they are busy.

    ``timeout`` None or <= 0 waits for ever; on timeout a P2RecError names the holders.
    """
    say = say or _say
    if n < 1:
        raise ValueError("n must be >= 1")
    if n > len(pool):
        raise P2RecError(f"the job needs {n} GPU(s) but only {len(pool)} exist ({', '.join(pool) or 'none'})")
    start = clock()
    next_note = start
    waited = False
    while True:
        lease = try_acquire(pool, n, lock_dir, note)
        if lease is not None:
            if waited:
                say(f"got GPU(s) {','.join(lease.devices)} after waiting {clock() - start:.0f} s")
            return lease
        now = clock()
        if timeout is not None and timeout > 0 and now - start >= timeout:
            raise P2RecError(f"no {n} free GPU(s) of {','.join(pool)} within {timeout:g} s; "
                             f"held: {_holders(pool, lock_dir)} (lock dir {lock_dir})")
        if now >= next_note:
            say(f"waiting for {n} free GPU(s) of {','.join(pool)}; held: {_holders(pool, lock_dir)}"
                f" (lock dir {lock_dir}; retrying every {poll:g} s)")
            next_note = now + 60.0
            waited = True
        sleep(poll)


def _holders(pool: Sequence[str], lock_dir: str) -> str:
    busy = []
    for device in pool:
        fd = _open_lock(lock_dir, device)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            busy.append(f"{device} by {_holder(lock_dir, device)}")
        finally:
            os.close(fd)  # closing drops the probe's lock, if it got one
    return "; ".join(busy) or "none (they were freed just now)"


def _say(message: str) -> None:
    print(f"p2rec gpu lease: {message}", file=sys.stderr, flush=True)


@dataclass
class Placement:
    """What a job gets: its environment, the lease that backs it (if any), and a one-line account."""

    env: dict[str, str]
    lease: Lease | None
    message: str


def place(n: int, env: Mapping[str, str] | None = None, *, lock_dir: str | None = None,
          timeout: float | None = None, poll: float = 2.0, note: str = "",
          say: Callable[[str], None] | None = None, run: Callable = subprocess.run) -> Placement:
    """Decide (and lease) the devices of one job that asks for n GPUs."""
    env = dict(os.environ if env is None else env)
    if n < 0:
        raise P2RecError(f"--n {n}: the number of GPUs must be >= 0")
    reason = scheduler_preset(env)
    if reason:
        preset = parse_devices(env[VISIBLE])
        msg = f"{VISIBLE}={env[VISIBLE]!r} was set by the scheduler ({reason}): left as it is"
        if len(preset) < n:
            msg += f" (warning: the job asked for {n} GPU(s) but sees {len(preset)})"
        return Placement(env, None, msg)
    if n == 0:
        env[VISIBLE] = ""
        return Placement(env, None, "0 GPUs requested: running on the CPU")
    pool, source = discover_devices(env, run)
    if not pool:
        env[VISIBLE] = ""
        return Placement(env, None, f"no GPU found ({source}): running on the CPU")
    lock_dir = lock_dir or default_lock_dir(env)
    if timeout is None and env.get(ENV_TIMEOUT):
        try:
            timeout = float(env[ENV_TIMEOUT])
        except ValueError:
            raise P2RecError(f"{ENV_TIMEOUT}={env[ENV_TIMEOUT]!r} is not a number of seconds") from None
    lease = acquire(pool, n, lock_dir, timeout=timeout, poll=poll, note=note, say=say)
    env[VISIBLE] = ",".join(lease.devices)
    if source == "nvidia-smi":  # nvidia-smi counts in PCI order; make CUDA count the same way
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return Placement(env, lease, f"{VISIBLE}={env[VISIBLE]} (leased from {','.join(pool)}, {source})")


def run_leased(n: int, command: Sequence[str], *, lock_dir: str | None = None, timeout: float | None = None,
               poll: float = 2.0, say: Callable[[str], None] | None = None) -> int:
    """Lease, then replace this process by the command (the locks stay open in it). Returns only on error."""
    if not command:
        raise P2RecError("no command given (usage: python -m p2rec.workflow.gpu_lease --n N -- command ...)")
    say = say or _say
    placement = place(n, lock_dir=lock_dir, timeout=timeout, poll=poll, say=say,
                      note=shlex.join(command)[:200])
    say(placement.message)
    if placement.lease is not None:
        placement.lease.keep_across_exec()
    try:
        os.execvpe(command[0], list(command), placement.env)
    except OSError as err:
        if placement.lease is not None:
            placement.lease.release()
        raise P2RecError(f"cannot run {command[0]!r}: {err.strerror}") from None
    return 127  # not reached


def lease_shell(command: str, gpus: str = "{resources.gpu}") -> str:
    """A rule's shell command run under the lease; ``gpus`` defaults to the rule's ``resources.gpu``.

    The prefix names no path, so cached rules hash the same in every workflow directory. ``command``
    must be one command (redirections are fine): wrap ``a && b`` as ``bash -c '...'``.
    """
    return f"python -m p2rec.workflow.gpu_lease --n {gpus} -- {command}"
