"""Between-workflow caching of an expensive stage (Snakemake --cache, $SNAKEMAKE_OUTPUT_CACHE).

The fixture workflow runs the real `prepare` stage and a cached stand-in for an LLM stage declared like the
LLM rules (cache: True, code_version param, named outputs, timing.json as an output, GPU lease prefix).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "tests" / "fixtures" / "cache_workflow" / "Snakefile"
OUT = Path("results/llm/synthetic/sft")


def start_workflow(tmp_path: Path, name: str, *config: str) -> tuple[Path, subprocess.Popen]:
    work = tmp_path / name
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
               SNAKEMAKE_OUTPUT_CACHE=str(tmp_path / "cache"), STAGE_RUNS=str(tmp_path / "runs.txt"),
               P2REC_GPUS="", P2REC_GPU_LOCK_DIR=str(tmp_path / "locks"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(work), "--workflow-profile", "none",
           "--cores", "1", "--cache"]
    if config:
        cmd += ["--config", *config]
    return work, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(started: tuple[Path, subprocess.Popen]) -> tuple[Path, str]:
    work, proc = started
    log, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, log[-4000:]
    return work, log


def run_workflow(tmp_path: Path, name: str, *config: str) -> tuple[Path, str]:
    return finish(start_workflow(tmp_path, name, *config))


def computed(tmp_path: Path) -> list[str]:
    runs = tmp_path / "runs.txt"
    return runs.read_text().splitlines() if runs.exists() else []


def test_second_workflow_reuses_cached_stage_until_a_setting_or_code_version_changes(tmp_path):
    (tmp_path / "cache").mkdir()

    first, log = run_workflow(tmp_path, "first")
    assert len(computed(tmp_path)) == 1
    assert f"Moving output file {OUT}/adapter.json to cache." in log
    assert f"Moving output file {OUT}/timing.json to cache." in log

    second, log = run_workflow(tmp_path, "second")
    assert "to cache." not in log
    assert len(computed(tmp_path)) == 1, "the same settings in another workflow directory recomputed the stage"
    assert f"Symlinking output file {OUT}/adapter.json from cache." in log
    assert f"Symlinking output file {OUT}/timing.json from cache." in log
    cache = (tmp_path / "cache").resolve()
    for name in ("adapter.json", "timing.json"):  # timing travels with the cached result
        out = second / OUT / name
        assert out.is_symlink() and out.resolve().parent == cache
        assert out.read_text() == (first / OUT / name).read_text()
    assert "computed" not in (second / "results/logs/llm/synthetic/sft.log").read_text()  # it did not run there
    assert "computed" in (first / "results/logs/llm/synthetic/sft.log").read_text()
    assert (second / "results/data/synthetic/sequences.txt").is_file()  # uncached upstream ran as usual

    # two more directories at once: one changes a setting of the stage, one its code version
    setting = start_workflow(tmp_path, "changed-setting", "lr=0.001")
    code = start_workflow(tmp_path, "changed-code", "code_version=sft-2")
    for started in (setting, code):
        _, log = finish(started)
        assert f"Moving output file {OUT}/adapter.json to cache." in log  # computed, then stored
    runs = {line.split()[0]: line for line in computed(tmp_path)[1:]}
    assert sorted(runs) == [str(code[0]), str(setting[0])]
    assert '"lr": 0.001}' in runs[str(setting[0])] and runs[str(setting[0])].endswith("sft-1")
    assert '"lr": 0.0001}' in runs[str(code[0])] and runs[str(code[0])].endswith("sft-2")
    assert len(list((tmp_path / "cache").glob("*_adapter.json"))) == 3
