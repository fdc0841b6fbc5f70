"""GPU lease with simulated devices: no GPU needed (device ids come from P2REC_GPUS)."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2rec import P2RecError
from p2rec.workflow import gpu

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "gpu_workflow"
CLEARED = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID",
           gpu.ENV_GPUS, gpu.ENV_PRESET, gpu.ENV_TIMEOUT, gpu.ENV_LOCK_DIR)


def clean_env(lock_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env[gpu.ENV_LOCK_DIR] = str(lock_dir)
    env.update(extra)
    return env


SHOW = "import os, sys; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), os.environ.get('CUDA_DEVICE_ORDER'))"


def lease_cmd(n: int, *command: str, timeout: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "p2rec.workflow.gpu_lease", "--n", str(n), "--poll", "0.1"]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    return cmd + ["--", *command]


def run_lease(env, n, *command, timeout=None):
    return subprocess.run(lease_cmd(n, *command, timeout=timeout), env=env, capture_output=True, text=True,
                          timeout=60)


# --- with Snakemake: concurrent jobs never share a device -------------------------------------------------

def test_workflow_jobs_never_share_a_device(tmp_path):
    env = clean_env(tmp_path / "locks", P2REC_GPUS="0,1,2,3")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(FIXTURE / "Snakefile"), "-d", str(work),
         "--workflow-profile", "none", "--cores", "4", "--resources", "gpu=2", "--quiet", "all",
         "--config", "one_gpu_jobs=4", "two_gpu_jobs=1", "sleep=1.5"],
        env=env, capture_output=True, text=True, timeout=180)
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
