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

Slots: with ``P2REC_GPU_SLOTS=S`` (or ``--slots S``; default 1) up to S small jobs share one device. N then
counts slots, the unit of ``snakemake --resources gpu=<devices x S>``: N below S takes N slots of one device
(a shared lock on the device file plus one exclusive lock per slot file), a multiple of S takes N / S whole
devices (an exclusive lock on each device file, which no slot holder can share). With S = 1 every job takes
whole devices, exactly as without slots. ``gpu_resource`` gives the amount a rule declares.
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
ENV_SLOTS = "P2REC_GPU_SLOTS"
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


def parse_slots(value: int | str, source: str = ENV_SLOTS) -> int:
    """Slots per device from ``value``; ``source`` (the variable or option it came from) names it in errors."""
    try:
        slots = int(str(value).strip())
    except ValueError:
        slots = 0
    if slots < 1:
        raise P2RecError(f"{source}={value!r}: the number of jobs that may share one GPU must be a whole "
                         f"number >= 1 (1 = every job gets whole GPUs)")
    return slots


def slots_per_device(env: Mapping[str, str] | None = None, slots: int | str | None = None) -> int:
    """The ``--slots`` option if given, else ``P2REC_GPU_SLOTS``, else 1 (unset or empty)."""
    if slots is not None:
        return parse_slots(slots, "--slots")
    env = os.environ if env is None else env
    raw = env.get(ENV_SLOTS, "")
    return parse_slots(raw) if raw.strip() else 1


def split_request(n: int, slots: int) -> tuple[int, int]:
    """``(whole devices, slots of one device)`` for a job that asks for n slot units; one of them is 0."""
    if n % slots == 0:
        return n // slots, 0
    if n < slots:
        return 0, n
    raise P2RecError(f"the job asks for {n} GPU slot(s) with {slots} slots per GPU ({ENV_SLOTS}): ask for fewer "
                     f"than {slots} (slots of one GPU) or a multiple of {slots} (whole GPUs)")


def gpu_resource(whole_device: bool = False, devices: int = 1, env: Mapping[str, str] | None = None) -> int:
    """The ``resources: gpu=`` amount of a rule, in slots: 1 for a job that may share a device, ``devices x
    slots`` for one that needs whole devices. With ``snakemake --resources gpu=<devices x slots>`` Snakemake
    then never starts more jobs than there are slots, and a whole-device job counts as a full device.

    Read when the workflow is parsed, so ``P2REC_GPU_SLOTS`` must be the same for Snakemake and its jobs
    (it is when both run in one shell). Unset, every amount is what it was before slots: 1, or ``devices``.
    """
    slots = slots_per_device(env)
    if not whole_device:
        if devices != 1:
            raise P2RecError(f"gpu_resource(devices={devices!r}): a job that shares a GPU runs on one device; "
                             f"pass whole_device=True for a job on several whole devices")
        return 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise P2RecError(f"gpu_resource(devices={devices!r}): the number of whole GPUs must be a whole number >= 1")
    return devices * slots


def devices_for(amount: int, env: Mapping[str, str] | None = None) -> int:
    """How many devices a job that declares ``amount`` slots sees (e.g. torchrun's process count)."""
    whole, part = split_request(int(amount), slots_per_device(env))
    return whole or (1 if part else 0)


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


def _lock_stem(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device)


def _lock_name(device: str, slot: int | None = None) -> str:
    """``gpu-0.lock`` for the device (its name from before slots, so that every lease agrees on it), and
    ``gpu-0.slot3.lock`` for its slot 3."""
    return _lock_stem(device) + ("" if slot is None else f".slot{slot}") + ".lock"


def _open_lock(lock_dir: str, device: str, slot: int | None = None) -> int:
    os.makedirs(lock_dir, exist_ok=True)
    try:  # shared by every user of the machine: world-writable, sticky, like /tmp
        if os.stat(lock_dir).st_uid == os.getuid():
            os.chmod(lock_dir, 0o1777)
    except OSError:
        pass
    path = os.path.join(lock_dir, _lock_name(device, slot))
    old = os.umask(0)
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's file that we may only read: flock works on it too
            return os.open(path, os.O_RDONLY)
    finally:
        os.umask(old)


def _holder(lock_dir: str, device: str, slot: int | None = None) -> str:
    try:
        with open(os.path.join(lock_dir, _lock_name(device, slot)), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or "unknown holder"
    except OSError:
        return "unknown holder"


@dataclass
class Lease:
    """Devices held through open, flock-ed file descriptors (released when they close)."""

    devices: list[str]
    fds: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # slot numbers on devices[0]; empty = whole devices

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


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def try_acquire_slots(pool: Sequence[str], count: int, slots: int, lock_dir: str, note: str = "") -> Lease | None:
    """Take ``count`` slots of one device now, or nothing.

    A slot holder keeps a shared lock on the device file (so no whole-device lease can take the device
    under it) and an exclusive one on each of its slot files (so at most ``slots`` jobs share it).

    Of the devices with room, the one already running the most jobs wins (ties: pool order). Spreading
    would give a lone small job a device to itself, but it leaves every device a little busy, and a
    whole-device job (LLM SFT), which needs a device with no job at all, could then wait behind a stream
    of small ones for ever. Packing keeps devices empty for it; a full grid uses every slot either way.
    """
    best = None  # (jobs already there, device, device fd, [(slot, fd), ...])
    for device in pool:
        dev_fd = _open_lock(lock_dir, device)
        if not _try_lock(dev_fd, fcntl.LOCK_SH):  # a whole-device lease holds it
            os.close(dev_fd)
            continue
        taken, busy = [], 0
        for slot in range(slots):
            fd = _open_lock(lock_dir, device, slot)
            free = _try_lock(fd, fcntl.LOCK_EX)
            if free and len(taken) < count:
                taken.append((slot, fd))
                continue
            busy += not free  # a free slot beyond what we need was only counted: closing frees it again
            os.close(fd)
        if len(taken) == count and (best is None or busy > best[0]):
            if best is not None:
                _close_all([best[2]] + [fd for _, fd in best[3]])
            best = (busy, device, dev_fd, taken)
            if busy == slots - count:  # full once we are in: no device can beat it
                break
        else:
            _close_all([dev_fd] + [fd for _, fd in taken])
    if best is None:
        return None
    _, device, dev_fd, taken = best
    for _, fd in taken:
        _write_holder(fd, note)
    return Lease([device], [dev_fd] + [fd for _, fd in taken], [slot for slot, _ in taken])


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _write_holder(fd: int, note: str) -> None:
    text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if note:
        text += f": {note}"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode("utf-8", "replace"), 0)
    except OSError:  # opened read-only (another user's lock file): the lock itself is what counts
        pass


def acquire(pool: Sequence[str], n: int, lock_dir: str, *, slots: int = 1, timeout: float | None = None,
            poll: float = 2.0, note: str = "", say: Callable[[str], None] | None = None,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Lease:
    """Take n slot units (whole devices when ``slots`` is 1), waiting (with a message now and then) while
    they are busy. See ``split_request`` for what n means with several slots per device.

    ``timeout`` None or <= 0 waits for ever; on timeout a P2RecError names the holders.
    """
    say = say or _say
    if n < 1:
        raise ValueError("n must be >= 1")
    whole, part = split_request(n, slots)
    if whole > len(pool):
        raise P2RecError(f"the job needs {whole} GPU(s) but only {len(pool)} exist ({', '.join(pool) or 'none'})")
    if whole:
        want = f"{whole} free GPU(s) of {','.join(pool)}" + (f" (all {slots} slots of each)" if slots > 1 else "")
    else:
        want = f"{part} free slot(s) of one GPU of {','.join(pool)} ({slots} slots per GPU)"
    start = clock()
    next_note = start
    waited = False
    while True:
        if whole:
            lease = try_acquire(pool, whole, lock_dir, note)
        else:
            lease = try_acquire_slots(pool, part, slots, lock_dir, note)
        if lease is not None:
            if waited:
                got = f"GPU(s) {','.join(lease.devices)}" if whole else \
                    f"slot(s) {','.join(map(str, lease.slots))} of GPU {lease.devices[0]}"
                say(f"got {got} after waiting {clock() - start:.0f} s")
            return lease
        now = clock()
        if timeout is not None and timeout > 0 and now - start >= timeout:
            raise P2RecError(f"no {want} within {timeout:g} s; held: {_holders(pool, lock_dir)} (lock dir {lock_dir})")
        if now >= next_note:
            say(f"waiting for {want}; held: {_holders(pool, lock_dir)}"
                f" (lock dir {lock_dir}; retrying every {poll:g} s)")
            next_note = now + 60.0
            waited = True
        sleep(poll)


def _holders(pool: Sequence[str], lock_dir: str) -> str:
    busy = []
    for device in pool:
        fd = _open_lock(lock_dir, device)
        try:
            if _try_lock(fd, fcntl.LOCK_EX):
                continue
        finally:
            os.close(fd)  # closing drops the probe's lock, if it got one
        shared = _slot_holders(lock_dir, device)
        if shared:
            busy.append(f"{device} shared by {len(shared)} job(s): {', '.join(shared)}")
        else:
            busy.append(f"{device} by {_holder(lock_dir, device)}")
    return "; ".join(busy) or "none (they were freed just now)"


def _slot_holders(lock_dir: str, device: str) -> list[str]:
    """The notes of the held slot files of a device, of any number of slots (another lease may use more)."""
    prefix, held = _lock_stem(device) + ".slot", []
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return held
    numbers = sorted(int(name[len(prefix):-5]) for name in names
                     if name.startswith(prefix) and name.endswith(".lock") and name[len(prefix):-5].isdigit())
    for slot in numbers:
        fd = _open_lock(lock_dir, device, slot)
        try:
            if not _try_lock(fd, fcntl.LOCK_EX):
                held.append(f"slot {slot} by {_holder(lock_dir, device, slot)}")
        finally:
            os.close(fd)
    return held


def _say(message: str) -> None:
    print(f"p2rec gpu lease: {message}", file=sys.stderr, flush=True)


@dataclass
class Placement:
    """What a job gets: its environment, the lease that backs it (if any), and a one-line account."""

    env: dict[str, str]
    lease: Lease | None
    message: str


def place(n: int, env: Mapping[str, str] | None = None, *, slots: int | str | None = None, lock_dir: str | None = None,
          timeout: float | None = None, poll: float = 2.0, note: str = "",
          say: Callable[[str], None] | None = None, run: Callable = subprocess.run) -> Placement:
    """Decide (and lease) the devices of one job that asks for n GPUs (n slots, with several per device).

    ``slots`` (the ``--slots`` option) wins over ``P2REC_GPU_SLOTS``; both unset = 1.
    """
    env = dict(os.environ if env is None else env)
    if n < 0:
        raise P2RecError(f"--n {n}: the number of GPUs must be >= 0")
    slots = slots_per_device(env, slots)
    whole, part = split_request(n, slots)  # a bad n fails here, the same with or without a scheduler
    reason = scheduler_preset(env)
    if reason:
        preset = parse_devices(env[VISIBLE])
        msg = f"{VISIBLE}={env[VISIBLE]!r} was set by the scheduler ({reason}): left as it is"
        needed = whole or (1 if part else 0)
        if len(preset) < needed:
            msg += f" (warning: the job asked for {needed} GPU(s) but sees {len(preset)})"
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
    lease = acquire(pool, n, lock_dir, slots=slots, timeout=timeout, poll=poll, note=note, say=say)
    env[VISIBLE] = ",".join(lease.devices)
    if source == "nvidia-smi":  # nvidia-smi counts in PCI order; make CUDA count the same way
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    shared = f"slot(s) {','.join(map(str, lease.slots))} of {slots} on it; " if lease.slots else ""
    return Placement(env, lease, f"{VISIBLE}={env[VISIBLE]} ({shared}leased from {','.join(pool)}, {source})")


def run_leased(n: int, command: Sequence[str], *, slots: int | str | None = None, lock_dir: str | None = None,
               timeout: float | None = None, poll: float = 2.0, say: Callable[[str], None] | None = None) -> int:
    """Lease, then replace this process by the command (the locks stay open in it). Returns only on error."""
    if not command:
        raise P2RecError("no command given (usage: python -m p2rec.workflow.gpu_lease --n N -- command ...)")
    say = say or _say
    placement = place(n, slots=slots, lock_dir=lock_dir, timeout=timeout, poll=poll, say=say,
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
    must be one command (redirections are fine): wrap ``a && b`` as ``bash -c '...'``. Whether the job
    shares a device follows from its ``resources.gpu`` (``gpu_resource``), read by the lease when it runs,
    so the text is the same for every number of slots and no job reruns when the slots change.
    """
    return f"python -m p2rec.workflow.gpu_lease --n {gpus} -- {command}"
