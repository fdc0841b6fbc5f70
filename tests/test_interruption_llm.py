"""Interruption of the LLM fine-tuning stage (``python -m p2rec sft``) by SIGKILL.

A subprocess is SIGKILLed as soon as its first checkpoint exists; rerunning the same command must resume
from that checkpoint (``resumed_from_step`` > 0 in ``timing.json``: it did not start over) and end with the
adapter, projection and head weights and the sample count of an uninterrupted run (CPU, same seed).
The tiny 2-layer Llama and the small dataset come from ``tests/test_llm.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_llm import adapter_tensors, sft_settings, stage_inputs, tiny_llm  # noqa: F401 (fixtures)

# many short epochs so the run lasts long enough to be killed between its first checkpoint and its end:
# 12 users -> 4 steps per user-level epoch; 33 instances -> 11 steps per instance-level epoch
EPOCHS = {"user": 30, "instance": 10}
BATCH_SIZE = 3
CHECKPOINT_EVERY = 2


def sft_command(stage_inputs, tiny_llm: str, mode: str, out: Path) -> list[str]:
    settings = sft_settings(epochs=EPOCHS[mode], batch_size=BATCH_SIZE)
    return [sys.executable, "-m", "p2rec", "sft", "--mode", mode, "--data", str(stage_inputs["data"]),
            "--item-table", str(stage_inputs["table"]), "--categories", str(stage_inputs["categories"]),
            "--g-u", str(stage_inputs["g_u"]), "--model", tiny_llm, "--settings", json.dumps(settings),
            "--out-dir", str(out), "--checkpoint-every", str(CHECKPOINT_EVERY), "--threads", "1", "--no-progress"]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 240) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("mode", ["user", "instance"])
def test_sigkill_during_sft_then_resume_gives_the_uninterrupted_result(stage_inputs, tiny_llm, mode):  # noqa: F811
    cwd = stage_inputs["dir"]
    t0 = time.perf_counter()
    reference = cwd / "reference"
    finish(start(sft_command(stage_inputs, tiny_llm, mode, reference), cwd))
    reference_s = time.perf_counter() - t0
    want = json.loads((reference / "timing.json").read_text())
    assert want["resumed_from_step"] is None and want["sessions"] == 1
    total_steps = want["steps"]
    assert total_steps >= 10 * CHECKPOINT_EVERY, total_steps

    run = cwd / "interrupted"
    cmd = sft_command(stage_inputs, tiny_llm, mode, run)
    proc = start(cmd, cwd)
    deadline = time.monotonic() + 180
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, "SFT ended before writing a checkpoint: " + proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    left = {p.name for p in run.iterdir()}
    assert "timing.json" not in left and "adapter" not in left, left  # no result of a killed run
    assert all(name == "checkpoint.pt" or (name.startswith(".checkpoint.pt.") and ".tmp" in name) for name in left)

    t1 = time.perf_counter()
    finish(start(cmd, cwd))
    resumed_s = time.perf_counter() - t1
    got = json.loads((run / "timing.json").read_text())
    step = got["resumed_from_step"]
    assert step is not None and 0 < step < total_steps, step  # resumed, not started over
    assert got["sessions"] == 2
    for key in ("samples", "steps", "tokens", "padded_tokens", "samples_per_epoch"):
        assert got[key] == want[key], key
    assert [h["loss"] for h in got["history"]] == [h["loss"] for h in want["history"]]  # every epoch's loss
    ref, new = adapter_tensors(reference / "adapter"), adapter_tensors(run / "adapter")
    assert ref.keys() == new.keys() and len(ref) > 0
    worst = max(float((ref[k] - new[k]).abs().max()) for k in ref)
    for key in ref:
        assert torch.allclose(ref[key], new[key], rtol=0, atol=1e-7), key
    assert not (run / "checkpoint.pt").exists() and not [p for p in run.iterdir() if p.name.startswith(".")]
    print(f"\nsft {mode}: uninterrupted {reference_s:.1f} s ({total_steps} steps); killed after the checkpoint of "
          f"step {step}; resumed run {resumed_s:.1f} s; samples {got['samples']} in both; "
          f"max weight difference {worst:.3g} over {len(ref)} tensors")
