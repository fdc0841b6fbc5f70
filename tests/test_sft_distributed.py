"""Data-parallel SFT: the sft stage under torchrun (2 CPU processes, gloo) trains the same weights as one
process and writes the same results layout; the workflow's launcher switches to torchrun only for gpu > 1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from p2rec.workflow.gpu import lease_shell
from p2rec.llm import sft
from p2rec.llm.settings import requested_gpus, sft_launcher
from tests.test_llm import adapter_tensors, run, sft_settings, stage_inputs, tiny_llm  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


def layout(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_torchrun(stage_inputs, tiny_llm, settings: dict, out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "p2rec", "sft", "--mode", "user", "--data", str(stage_inputs["data"]),
           "--item-table", str(stage_inputs["table"]), "--categories", str(stage_inputs["categories"]),
           "--g-u", str(stage_inputs["g_u"]), "--model", tiny_llm, "--settings", json.dumps(settings),
           "--out-dir", str(out), "--checkpoint-every", "1", "--threads", "1", "--no-progress"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)


def test_two_process_sft_matches_one_process(stage_inputs, tiny_llm):
    # 12 users, batch 11: global batches of 11 and 1 -> rank slices 6/5 (uneven) and 1/0 (rank 1 empty).
    # Dropout off: its random masks are drawn per process and would differ from one process's.
    settings = sft_settings(epochs=2, batch_size=11, lr=1e-2,
                            lora={**sft_settings()["lora"], "dropout": 0.0})
    single = run(stage_inputs, tiny_llm, out="single", settings=settings, checkpoint_every=1)

    t0 = time.perf_counter()
    proc = run_torchrun(stage_inputs, tiny_llm, settings, stage_inputs["dir"] / "ddp")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    one, two = stage_inputs["dir"] / "single", stage_inputs["dir"] / "ddp"
    assert layout(one) == layout(two)  # adapter/ + timing.json, no checkpoint left behind
    assert "checkpoint.pt" not in layout(two) and (two / "timing.json").exists()

    timing = json.loads((two / "timing.json").read_text())
    assert timing["world_size"] == 2 and "world_size" not in single
    for key in ("samples", "tokens", "steps", "samples_per_epoch", "epochs"):
        assert timing[key] == single[key], key  # summed over the ranks = the global batches
    assert timing["steps"] == 4 and timing["samples"] == 24
    for a, b in zip(single["history"], timing["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)

    ref, got = adapter_tensors(one / "adapter"), adapter_tensors(two / "adapter")
    assert ref.keys() == got.keys() and any("lora_B" in k for k in ref)
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    moved = max(float(ref[k].abs().max()) for k in ref if "lora_B" in k)  # lora_B starts at zero
    print(f"\nmax |single - torchrun x2| over trained weights: {diff:.3e} (largest lora_B entry {moved:.3e}); "
          f"torchrun run {elapsed:.1f} s")
    assert moved > 1e-3  # training moved the weights, so the comparison means something
    for key in ref:
        assert torch.allclose(ref[key], got[key], atol=1e-5, rtol=1e-4), key
    a = json.loads((one / "adapter" / sft.TEMPLATE_FILE).read_text())
    b = json.loads((two / "adapter" / sft.TEMPLATE_FILE).read_text())
    assert a == b


def test_the_tolerance_tells_other_batches_apart(stage_inputs, tiny_llm):
    """Control for the test above: other global batches (batch 6 instead of 11) give weights far outside
    its tolerance, so matching within it shows that the global batches were the same."""
    lora = {**sft_settings()["lora"], "dropout": 0.0}
    a = run(stage_inputs, tiny_llm, out="b11", settings=sft_settings(epochs=1, batch_size=11, lr=1e-2, lora=lora))
    b = run(stage_inputs, tiny_llm, out="b6", settings=sft_settings(epochs=1, batch_size=6, lr=1e-2, lora=lora))
    assert a["samples"] == b["samples"]
    ref, got = adapter_tensors(stage_inputs["dir"] / "b11" / "adapter"), adapter_tensors(stage_inputs["dir"] / "b6" / "adapter")
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) > 1e-3


def test_shards_cover_each_global_batch_once():
    idx = np.array([7, 3, 9, 1, 4])
    parts = [sft.shard(idx, sft.Distributed(r, 2, r)) for r in range(2)]
    assert [p.tolist() for p in parts] == [[7, 3, 9], [1, 4]]
    assert sft.shard(idx, None) is idx
    assert [len(sft.shard(np.array([5]), sft.Distributed(r, 3, r))) for r in range(3)] == [1, 0, 0]


def test_launcher_is_torchrun_only_for_several_gpus():
    body = " sft --mode {params.mode} --out-dir x > {log} 2>&1"
    # one device: exactly the command text the rule always had, so no job reruns and cache keys hold
    assert lease_shell(sft_launcher(1) + body) == lease_shell("python -m p2rec" + body)
    assert sft_launcher(0) == "python -m p2rec"
    multi = lease_shell(sft_launcher(2) + body)
    assert multi.startswith("python -m p2rec.workflow.gpu_lease --n {resources.gpu} -- python -m torch.distributed.run "
                            "--standalone --nproc_per_node 2 -m p2rec sft ")
    assert requested_gpus({}, "llm_sft") == 1
    assert requested_gpus({"llm_sft": {"gpu": 2}}, "llm_sft") == 2
    assert requested_gpus({"llm_sft": {"gpu": "4"}, "other": {"gpu": 1}}, "llm_sft") == 4
    assert requested_gpus({"other": {"gpu": 3}}, "llm_sft") == 1
    from snakemake.resources import Resources  # what `--set-resources llm_sft:gpu=2` gives the Snakefile

    assert requested_gpus({"llm_sft": Resources.from_mapping({"gpu": 2})}, "llm_sft") == 2
    assert requested_gpus({"llm_sft": Resources.from_mapping({"mem_mb": 100})}, "llm_sft") == 1
    from p2rec import P2RecError

    with pytest.raises(P2RecError, match="llm_sft:gpu"):
        requested_gpus({"llm_sft": {"gpu": "two"}}, "llm_sft")


def test_llm_rule_uses_the_launcher():
    text = (REPO / "rules" / "llm.smk").read_text()
    assert 'SFT_GPUS = requested_gpus(workflow.resource_settings.overwrite_resources, "llm_sft")' in text
    assert 'sft_launcher(SFT_GPUS) + " sft --mode {params.mode}' in text
