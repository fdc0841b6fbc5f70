"""Between-workflow caching of an expensive stage (Snakemake --cache, $SNAKEMAKE_OUTPUT_CACHE).

The fixture workflow runs the real `prepare` stage and a cached stand-in for an LLM stage declared like the
LLM rules (cache: True, code_version param, named outputs, timing.json as an output, GPU lease prefix).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_snakemake
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


def test_real_llm_stages_are_reused_from_the_cache_across_workflow_directories(tmp_path):
    """The workflow's own llm_sft / llm_extract / pretrain_backbone rules (tiny LLM): a second directory with
    the same LLM settings takes them from the cache, a changed LLM setting computes them again."""
    import yaml

    from p2rec.llm.tiny import build_tiny_llm
    from tests.test_llm_workflow import tiny_config

    llm = build_tiny_llm(tmp_path / "tiny_llm")
    (tmp_path / "cache").mkdir()
    target = "work/main/llm/shared/synthetic/p2rec/extract_timing.json"

    def run(name: str, **llm_overrides) -> str:
        work = tmp_path / name
        work.mkdir()
        config = tiny_config(llm)
        config["llm"].update(llm_overrides)
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        env = dict(SNAKEMAKE_OUTPUT_CACHE=str(tmp_path / "cache"), P2REC_GPU_LOCK_DIR=str(tmp_path / "locks"))
        proc = run_snakemake(work, "--cores", "2", "--cache", "--", target, timeout=600, env=env,
                             drop_env=("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    sft = "work/main/llm/shared/synthetic/p2rec"
    log = run("first")
    assert f"Moving output file {sft}/timing.json to cache." in log
    assert f"Moving output file {sft}/item_hidden.npy to cache." in log
    log = run("second")
    # the extraction outputs come straight from the cache, so nothing upstream (SFT, stage 0) is even needed
    assert f"Symlinking output file {sft}/item_hidden.npy from cache." in log
    assert f"Symlinking output file {sft}/extract_timing.json from cache." in log
    assert "to cache." not in log  # nothing computed again, stage 0 included
    sft_log = tmp_path / "second" / "work/main/logs/llm/shared/synthetic/sft_p2rec.log"
    assert not sft_log.exists() or sft_log.read_text() == ""  # the stage never ran there
    log = run("changed-lr", lr=0.001)
    assert f"Moving output file {sft}/timing.json to cache." in log  # a new LLM setting: computed again
    assert "Symlinking output file work/main/pretrain/shared/synthetic/item_table.npy from cache." in log  # stage 0 reused
    assert "Moving output file work/main/pretrain/shared/synthetic/item_table.npy to cache." not in log
