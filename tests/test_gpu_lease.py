"""GPU lease with simulated devices: no GPU needed (device ids come from P2REC_GPUS)."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2rec import P2RecError
from p2rec.workflow import gpu

from tests.conftest import REPO, run_snakemake
FIXTURE = REPO / "tests" / "fixtures" / "gpu_workflow"
CLEARED = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID",
           gpu.ENV_GPUS, gpu.ENV_PRESET, gpu.ENV_TIMEOUT, gpu.ENV_LOCK_DIR, gpu.ENV_SLOTS)


def clean_env(lock_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env[gpu.ENV_LOCK_DIR] = str(lock_dir)
    env.update(extra)
    return env


SHOW = "import os, sys; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), os.environ.get('CUDA_DEVICE_ORDER'))"


def lease_cmd(n: int, *command: str, timeout: float | None = None, slots: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "p2rec.workflow.gpu_lease", "--n", str(n), "--poll", "0.1"]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    if slots is not None:
        cmd += ["--slots", slots]
    return cmd + ["--", *command]


def run_lease(env, n, *command, timeout=None, slots=None):
    return subprocess.run(lease_cmd(n, *command, timeout=timeout, slots=slots), env=env, capture_output=True,
                          text=True, timeout=60)


# --- with Snakemake: concurrent jobs never share a device -------------------------------------------------

def test_workflow_jobs_never_share_a_device(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1,2,3")
    work = tmp_path / "work"
    work.mkdir()
    proc = run_snakemake(work, "--workflow-profile", "none", "--cores", "4", "--resources", "gpu=2", "--quiet", "all",
                         "--config", "one_gpu_jobs=4", "two_gpu_jobs=1", "sleep=1.5",
                         snakefile=FIXTURE / "Snakefile", base_env=env, env={"P2REC_GPUS": env["P2REC_GPUS"]},
                         timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {p.stem: json.loads(p.read_text()) for p in (work / "out").glob("*.json")}
    assert sorted(jobs) == ["a0", "a1", "a2", "a3", "b0"]
    for name, job in jobs.items():
        devices = job["visible"].split(",")
        assert len(devices) == len(set(devices)) == (2 if name.startswith("b") else 1), (name, job)
        assert set(devices) <= {"0", "1", "2", "3"}
        job["devices"] = set(devices)
        log = (work / "logs" / f"{name}.log").read_text()
        assert f"CUDA_VISIBLE_DEVICES={job['visible']} (leased from 0,1,2,3, P2REC_GPUS)" in log
    overlapping = 0
    for (na, a), (nb, b) in itertools.combinations(jobs.items(), 2):
        if a["start"] < b["end"] and b["start"] < a["end"]:
            overlapping += 1
            assert not a["devices"] & b["devices"], f"{na} and {nb} ran at once on {a['devices'] & b['devices']}"
    # with gpu=2 the four one-GPU jobs run two at a time: the check above must have had pairs to look at
    assert overlapping >= 1, jobs
    # every lock was released when its job ended
    assert gpu.try_acquire(["0", "1", "2", "3"], 4, str(tmp_path / "locks")) is not None


# --- the lease itself --------------------------------------------------------------------------------------

def wait_for(path: Path, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


HOLD = ("import json, os, sys, time; "
        "open(sys.argv[1], 'w').write(json.dumps({'visible': os.environ['CUDA_VISIBLE_DEVICES'], "
        "'pid': os.getpid()}) + '\\n'); time.sleep(120)")


def test_sigkilled_job_frees_its_device_for_a_waiting_lease(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1")
    a_rec, b_rec = tmp_path / "a.json", tmp_path / "b.json"
    a = subprocess.Popen(lease_cmd(1, sys.executable, "-c", HOLD, str(a_rec)), env=env,
                         stderr=subprocess.DEVNULL)
    procs = [a]
    try:
        got_a = wait_for(a_rec)
        assert got_a == {"visible": "0", "pid": a.pid}  # the lease exec-ed the job: same process, holds the lock
        b = subprocess.Popen(lease_cmd(1, sys.executable, "-c", HOLD, str(b_rec)), env=env,
                             stderr=subprocess.DEVNULL)
        procs.append(b)
        assert wait_for(b_rec)["visible"] == "1"

        busy = run_lease(env, 1, sys.executable, "-c", SHOW, timeout=0.5)
        assert busy.returncode == 2
        assert "no 1 free GPU(s) of 0,1 within 0.5 s" in busy.stderr
        assert f"0 by pid {a.pid}" in busy.stderr and f"1 by pid {b.pid}" in busy.stderr

        waiting = subprocess.Popen(lease_cmd(1, sys.executable, "-c", SHOW), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        procs.append(waiting)
        time.sleep(0.5)
        assert waiting.poll() is None  # still waiting: both devices are held
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 0, err
        assert out.split() == ["'0'", "None"]  # the device of the killed job
        assert "waiting for 1 free GPU(s) of 0,1" in err and "got GPU(s) 0 after waiting" in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_two_devices_for_gpu_2_and_all_or_nothing(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1,2")
    proc = run_lease(env, 2, sys.executable, "-c", SHOW)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "'0,1'"
    with gpu.try_acquire(["0", "1", "2"], 2, str(tmp_path / "locks")) as held:
        assert held.devices == ["0", "1"]
        # only one is free: a job that needs two waits instead of taking it
        assert gpu.try_acquire(["0", "1", "2"], 2, str(tmp_path / "locks")) is None
        proc = run_lease(env, 1, sys.executable, "-c", SHOW)
        assert proc.stdout.split()[0] == "'2'"  # and the partial try did not keep device 2
    too_many = run_lease(env, 4, "true")
    assert too_many.returncode == 2 and "needs 4 GPU(s) but only 3 exist" in too_many.stderr


def test_preset_devices_under_slurm_are_left_alone(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1", SLURM_JOB_ID="4242", CUDA_VISIBLE_DEVICES="3")
    with gpu.try_acquire(["0", "1"], 2, str(tmp_path / "locks")):  # the local pool is busy: irrelevant here
        proc = run_lease(env, 1, sys.executable, "-c", SHOW, timeout=0.5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["'3'", "None"]
    assert "set by the scheduler (SLURM_JOB_ID=4242): left as it is" in proc.stderr
    # the explicit flag does the same without a scheduler; =0 leases from the preset list instead
    flagged = run_lease(clean_env(tmp_path / "l2", CUDA_VISIBLE_DEVICES="5,6", P2REC_GPU_PRESET="1"), 1,
                        sys.executable, "-c", SHOW)
    assert flagged.stdout.split()[0] == "'5,6'" and "P2REC_GPU_PRESET=1" in flagged.stderr
    forced = run_lease(clean_env(tmp_path / "l3", CUDA_VISIBLE_DEVICES="5,6", SLURM_JOB_ID="1",
                                 P2REC_GPU_PRESET="0"), 1, sys.executable, "-c", SHOW)
    assert forced.stdout.split()[0] == "'5'" and "leased from 5,6, preset CUDA_VISIBLE_DEVICES" in forced.stderr


def test_no_device_or_zero_gpus_runs_on_cpu(tmp_path):
    def missing(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    placement = gpu.place(1, {"PATH": "/nowhere"}, lock_dir=str(tmp_path), run=missing)
    assert placement.lease is None and placement.env["CUDA_VISIBLE_DEVICES"] == ""
    assert placement.message == "no GPU found (nvidia-smi not available): running on the CPU"
    zero = run_lease(clean_env(tmp_path / "locks", P2REC_GPUS="0,1"), 0, sys.executable, "-c", SHOW)
    assert zero.stdout.split()[0] == "''" and "0 GPUs requested: running on the CPU" in zero.stderr
    empty = run_lease(clean_env(tmp_path / "locks", P2REC_GPUS=""), 1, sys.executable, "-c", SHOW)
    assert empty.stdout.split()[0] == "''" and "no GPU found (P2REC_GPUS)" in empty.stderr


def test_devices_from_nvidia_smi_use_pci_order(tmp_path):
    def fake_smi(cmd, **kwargs):
        assert cmd == list(gpu.NVIDIA_SMI)
        return subprocess.CompletedProcess(cmd, 0, stdout="0\n1\n", stderr="")

    with gpu.place(1, {}, lock_dir=str(tmp_path), run=fake_smi).lease as lease:
        assert lease.devices == ["0"]
        second = gpu.place(1, {}, lock_dir=str(tmp_path), run=fake_smi)
        assert second.env["CUDA_VISIBLE_DEVICES"] == "1" and second.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        second.lease.release()
    failed = gpu.discover_devices({}, lambda cmd, **kw: subprocess.CompletedProcess(cmd, 9, "", "no driver"))
    assert failed == ([], "nvidia-smi not available")


def test_timeout_message_and_bad_input(tmp_path):
    clock = itertools.count(0.0, 1.0)
    said = []
    with gpu.try_acquire(["0"], 1, str(tmp_path)):
        with pytest.raises(P2RecError, match=r"no 1 free GPU\(s\) of 0 within 3 s; held: 0 by pid"):
            gpu.acquire(["0"], 1, str(tmp_path), timeout=3, poll=0, say=said.append,
                        clock=lambda: next(clock), sleep=lambda s: None)
    assert len(said) == 1 and said[0].startswith("waiting for 1 free GPU(s) of 0")
    with pytest.raises(P2RecError, match="P2REC_GPU_PRESET"):
        gpu.scheduler_preset({"CUDA_VISIBLE_DEVICES": "0", "P2REC_GPU_PRESET": "maybe"})
    assert gpu.parse_devices(" 0, 1,,GPU-ab12 ") == ["0", "1", "GPU-ab12"]
    missing = run_lease(clean_env(tmp_path / "locks"), 1)
    assert missing.returncode == 2 and "no command given" in missing.stderr


def test_rule_helper_names_no_path():
    assert gpu.lease_shell("cmd > {log} 2>&1") == "python -m p2rec.workflow.gpu_lease --n {resources.gpu} -- cmd > {log} 2>&1"


# --- slots: several small jobs per device ------------------------------------------------------------------

RECORD = FIXTURE / "record.py"

# small jobs declare one slot, whole-device jobs every slot of a device (gpu_resource, read at parse time)
SLOT_SNAKEFILE = """
from p2rec.workflow.gpu import gpu_resource, lease_shell

SMALL = [f"s{i}" for i in range(int(config["small"]))]
WHOLE = [f"w{i}" for i in range(int(config["whole"]))]


rule all:
    input:
        expand("out/{job}.json", job=SMALL + WHOLE),


rule small:
    output:
        "out/{job}.json",
    wildcard_constraints:
        job=r"s\\d+",
    resources:
        gpu=gpu_resource(),
    log:
        "logs/{job}.log",
    shell:
        lease_shell("python {config[record]} {output} {config[sleep]} > {log} 2>&1")


rule whole:
    output:
        "out/{job}.json",
    wildcard_constraints:
        job=r"w\\d+",
    resources:
        gpu=gpu_resource(whole_device=True),
    log:
        "logs/{job}.log",
    shell:
        lease_shell("python {config[record]} {output} {config[sleep]} > {log} 2>&1")
"""


def max_overlap(intervals) -> int:
    """The most intervals (start, end) open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = most = 0
    for _, step in events:  # at equal times the end (-1) sorts first: touching intervals do not overlap
        now += step
        most = max(most, now)
    return most


def read_jobs(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_workflow_with_slots_shares_devices_up_to_the_slots(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1", P2REC_GPU_SLOTS="3")
    work = tmp_path / "work"
    work.mkdir()
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SLOT_SNAKEFILE)
    proc = run_snakemake(work, "--workflow-profile", str(REPO / "profiles" / "gpu"), "--cores", "8",
                         "--resources", "gpu=6", "--quiet", "all", "--config", "small=8", "whole=2", "sleep=2",
                         f"record={RECORD}", snakefile=snakefile, base_env=env, env={"P2REC_GPUS": env["P2REC_GPUS"]},
                         timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = read_jobs(work / "out")
    assert sorted(jobs) == [f"s{i}" for i in range(8)] + ["w0", "w1"]
    for name, job in jobs.items():
        assert job["visible"] in ("0", "1"), (name, job)  # one device each, small or whole
        log = (work / "logs" / f"{name}.log").read_text()
        if name.startswith("s"):
            assert f"CUDA_VISIBLE_DEVICES={job['visible']} (slot(s) " in log and " of 3 on it; leased from 0,1" in log
        else:
            assert f"CUDA_VISIBLE_DEVICES={job['visible']} (leased from 0,1, P2REC_GPUS)" in log
    for device in ("0", "1"):
        small = [(j["start"], j["end"]) for n, j in jobs.items() if n.startswith("s") and j["visible"] == device]
        assert max_overlap(small) <= 3, (device, jobs)
        for name, job in jobs.items():
            if name.startswith("w") and job["visible"] == device:
                for other, o in jobs.items():
                    if other != name and o["visible"] == device:
                        assert not (job["start"] < o["end"] and o["start"] < job["end"]), (name, other, jobs)
    # devices were shared for real: without it the checks above would have nothing to catch
    assert max(max_overlap([(j["start"], j["end"]) for n, j in jobs.items() if n.startswith("s") and
                            j["visible"] == d]) for d in ("0", "1")) >= 2, jobs
    # every lock was released: both devices can be taken whole again
    assert gpu.try_acquire(["0", "1"], 2, str(tmp_path / "locks")) is not None


def test_lease_alone_never_puts_more_jobs_on_a_device_than_its_slots(tmp_path):
    # six jobs at once on one device with two slots, no Snakemake to hold any of them back
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0")
    procs = [subprocess.Popen(lease_cmd(1, sys.executable, str(RECORD), str(tmp_path / f"j{i}.json"), "2",
                                        slots="2"), env=env, stderr=subprocess.PIPE, text=True) for i in range(6)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    jobs = read_jobs(tmp_path)
    assert len(jobs) == 6 and {j["visible"] for j in jobs.values()} == {"0"}
    assert max_overlap([(j["start"], j["end"]) for j in jobs.values()]) == 2, jobs


def test_whole_device_job_never_shares_its_device(tmp_path):
    locks = str(tmp_path / "locks")
    with gpu.try_acquire_slots(["0"], 1, 2, locks, note="small job") as small:
        assert (small.devices, small.slots) == (["0"], [0])
        # one slot is busy: a whole-device lease waits, a second small job takes the other slot
        assert gpu.try_acquire(["0"], 1, locks) is None
        with gpu.try_acquire_slots(["0"], 1, 2, locks) as second:
            assert second.slots == [1]
            assert gpu.try_acquire_slots(["0"], 1, 2, locks) is None  # no third slot
        with pytest.raises(P2RecError, match=r"no 1 free GPU\(s\) of 0 \(all 2 slots of each\) within 1 s; "
                                             r"held: 0 shared by 1 job\(s\): slot 0 by pid \d+ .*: small job"):
            gpu.acquire(["0"], 2, locks, slots=2, timeout=1, poll=0, say=lambda m: None,
                        clock=itertools.count(0.0, 1.0).__next__, sleep=lambda s: None)
    with gpu.acquire(["0"], 2, locks, slots=2, note="sft") as whole:  # every slot free again: it gets the device
        assert whole.devices == ["0"] and whole.slots == []
        assert gpu.try_acquire_slots(["0"], 1, 2, locks) is None
        with pytest.raises(P2RecError, match=r"no 1 free slot\(s\) of one GPU of 0 \(2 slots per GPU\) within "
                                             r"1 s; held: 0 by pid \d+ .*: sft"):
            gpu.acquire(["0"], 1, locks, slots=2, timeout=1, poll=0, say=lambda m: None,
                        clock=itertools.count(0.0, 1.0).__next__, sleep=lambda s: None)
    # through the command line: a whole-device job (--n = slots) holds the device, a small one times out
    env = clean_env(tmp_path / "cli", P2REC_GPUS="0", P2REC_GPU_SLOTS="4")
    rec = tmp_path / "whole.json"
    holder = subprocess.Popen(lease_cmd(4, sys.executable, "-c", HOLD, str(rec)), env=env, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert wait_for(rec)["visible"] == "0"
        busy = run_lease(env, 1, sys.executable, "-c", SHOW, timeout=0.5)
        assert busy.returncode == 2 and f"held: 0 by pid {holder.pid}" in busy.stderr, busy.stderr
    finally:
        holder.kill()
        holder.wait(timeout=10)
    shared = run_lease(env, 1, sys.executable, "-c", SHOW)
    assert shared.returncode == 0 and shared.stdout.split()[0] == "'0'", shared.stderr
    assert "CUDA_VISIBLE_DEVICES=0 (slot(s) 0 of 4 on it; leased from 0, P2REC_GPUS)" in shared.stderr


def test_small_jobs_pack_onto_the_busiest_device(tmp_path):
    locks = str(tmp_path)
    first = gpu.try_acquire_slots(["1"], 1, 3, locks)
    # device 1 already runs a job: the next ones join it until it is full, device 0 stays free for a whole job
    second = gpu.try_acquire_slots(["0", "1"], 1, 3, locks)
    third = gpu.try_acquire_slots(["0", "1"], 1, 3, locks)
    fourth = gpu.try_acquire_slots(["0", "1"], 1, 3, locks)
    assert [lease.devices for lease in (second, third, fourth)] == [["1"], ["1"], ["0"]]
    assert sorted(first.slots + second.slots + third.slots) == [0, 1, 2]
    # two slots of one device for one job: only device 0 still has two free
    pair = gpu.try_acquire_slots(["0", "1"], 2, 3, locks)
    assert (pair.devices, pair.slots) == (["0"], [1, 2])
    for lease in (first, second, third, fourth, pair):
        lease.release()
    assert gpu.try_acquire(["0", "1"], 2, locks) is not None


def test_one_slot_per_device_is_the_lease_without_slots(tmp_path):
    assert gpu.gpu_resource(env={}) == gpu.gpu_resource(whole_device=True, env={}) == 1
    assert gpu.gpu_resource(whole_device=True, devices=2, env={gpu.ENV_SLOTS: "1"}) == 2
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1,2", P2REC_GPU_SLOTS="1")
    proc = run_lease(env, 2, sys.executable, "-c", SHOW)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "'0,1'"
    assert "CUDA_VISIBLE_DEVICES=0,1 (leased from 0,1,2, P2REC_GPUS)" in proc.stderr
    assert sorted(os.listdir(tmp_path / "locks")) == ["gpu-0.lock", "gpu-1.lock"]  # no slot files
    # the device file is the one every lease agrees on: a whole-device lease and slot leases exclude each other
    locks = str(tmp_path / "locks")
    with gpu.try_acquire(["0"], 1, locks):
        assert gpu.try_acquire_slots(["0"], 1, 8, locks) is None
    with gpu.try_acquire_slots(["0"], 1, 8, locks):
        assert gpu.try_acquire(["0"], 1, locks) is None


def test_resource_amounts_and_devices_per_amount():
    slots8 = {gpu.ENV_SLOTS: "8"}
    assert gpu.gpu_resource(env=slots8) == 1
    assert gpu.gpu_resource(whole_device=True, env=slots8) == 8
    assert gpu.gpu_resource(whole_device=True, devices=2, env=slots8) == 16
    assert [gpu.devices_for(n, slots8) for n in (0, 1, 3, 8, 16)] == [0, 1, 1, 1, 2]
    assert gpu.devices_for(2, {}) == 2
    assert gpu.split_request(5, 8) == (0, 5) and gpu.split_request(16, 8) == (2, 0)
    with pytest.raises(P2RecError, match=r"asks for 12 GPU slot\(s\) with 8 slots per GPU \(P2REC_GPU_SLOTS\)"):
        gpu.devices_for(12, slots8)
    with pytest.raises(P2RecError, match="shares a GPU runs on one device"):
        gpu.gpu_resource(devices=2, env=slots8)
    with pytest.raises(P2RecError, match=r"devices=0\): the number of whole GPUs"):
        gpu.gpu_resource(whole_device=True, devices=0, env=slots8)


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "two"])
def test_bad_slot_values_name_the_variable_or_option(tmp_path, bad):
    expected = f"P2REC_GPU_SLOTS={bad!r}: the number of jobs that may share one GPU must be a whole number >= 1"
    with pytest.raises(P2RecError, match=re.escape(expected)):
        gpu.slots_per_device({gpu.ENV_SLOTS: bad})
    with pytest.raises(P2RecError, match=re.escape(expected)):
        gpu.gpu_resource(whole_device=True, env={gpu.ENV_SLOTS: bad})  # at parse time, in the rules
    with pytest.raises(P2RecError, match=re.escape(f"--slots={bad!r}")):
        gpu.place(1, {gpu.ENV_GPUS: "0"}, slots=bad, lock_dir=str(tmp_path))
    from_env = run_lease(clean_env(tmp_path / "locks", P2REC_GPUS="0", P2REC_GPU_SLOTS=bad), 1, "true")
    assert from_env.returncode == 2 and expected in from_env.stderr, from_env.stderr
    option = run_lease(clean_env(tmp_path / "locks", P2REC_GPUS="0"), 1, "true", slots=bad)
    assert option.returncode == 2 and f"--slots={bad!r}: the number of jobs" in option.stderr, option.stderr


def test_request_that_is_neither_slots_nor_whole_devices_is_refused(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1", P2REC_GPU_SLOTS="4")
    proc = run_lease(env, 6, "true")
    assert proc.returncode == 2
    assert "asks for 6 GPU slot(s) with 4 slots per GPU (P2REC_GPU_SLOTS): ask for fewer than 4" in proc.stderr
    too_many = run_lease(env, 12, "true")
    assert too_many.returncode == 2 and "needs 3 GPU(s) but only 2 exist" in too_many.stderr
