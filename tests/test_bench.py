"""The `p2rec bench` group: its commands, the light CLI, the RecBole worker's separate environment, check-cuda.

The benchmarks' own results are tested beside the code they measure (test_backbones.py, test_llm.py,
test_tables.py); here what holds for the group as a whole."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from p2rec import P2RecError
from p2rec.bench.commands import COMMANDS
from p2rec.cli import build_parser, main as cli


def test_the_cli_builds_without_importing_torch_or_the_benchmarks():
    code = ("import sys; from p2rec.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m in ('torch', 'pandas') or m.startswith('p2rec.bench.')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "['p2rec.bench.commands']"


def test_every_command_names_a_function_and_the_recbole_choices_match_its_module():
    for name, (module, function, _, _) in COMMANDS.items():
        assert callable(getattr(importlib.import_module(f"p2rec.bench.{module}"), function)), name
    from p2rec.bench import commands, recbole_compare

    assert commands.RECBOLE_MODELS == sorted(recbole_compare.RECBOLE_MODELS)
    assert commands.RECBOLE_LOSSES == sorted(recbole_compare.LOSSES)


def test_recbole_worker_needs_nothing_of_p2rec_and_is_started_as_a_file(tmp_path):
    """The worker runs in RecBole's own environment: it imports the standard library, torch and RecBole only,
    and the comparison starts it by its path with RecBole's interpreter."""
    from p2rec.bench import recbole_compare

    worker = recbole_compare.WORKER
    tree = ast.parse(worker.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"torch", "recbole"}
    # an interpreter without any site-packages (neither p2rec nor torch) gets through the worker's own start
    # and its job file, and stops at torch: the failure comes back as one P2RecError with the log's tail
    bare = tmp_path / "python"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    args = build_parser().parse_args(["bench", "recbole", "--data", str(tmp_path / "sequences.txt")])
    with pytest.raises(P2RecError, match=r"RecBole GRU4Rec failed \(exit 1\)(.|\n)*No module named 'torch'"):
        recbole_compare.run_recbole(bare, args, tmp_path / "work", "tiny", "gru4rec", tmp_path / "expected.json")
    assert json.loads((tmp_path / "work" / "run-gru4rec" / "job.json").read_text())["model"] == "GRU4Rec"


@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(5)
    lines = [f"{u} " + " ".join(map(str, rng.choice(np.arange(1, 21), size=rng.integers(4, 8), replace=False)))
             for u in range(1, 13)]
    path = tmp_path / "sequences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_check_cuda_compares_the_two_extractions_and_stops_without_a_device(tiny_data, tmp_path, capsys):
    """`--device cpu` runs the whole check on the CPU (both extractions alike); `--device cuda` on a machine
    without one stops with one line."""
    out = tmp_path / "check.json"
    assert cli(["bench", "check-cuda", "--data", str(tiny_data), "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["gpu"] is None and summary["sft"]["device"] == "cpu" and summary["hidden_finite"]
    assert summary["parsed_agreement_cuda_vs_cpu"] == 1.0
    assert summary["hidden_correlation_cuda_bf16_vs_cpu_fp32"] == pytest.approx(1.0)
    if torch.cuda.is_available():
        return
    capsys.readouterr()
    assert cli(["bench", "check-cuda", "--data", str(tiny_data)]) == 2
    assert capsys.readouterr().err == "p2rec bench: error: no CUDA device visible\n"


def test_a_bench_usage_error_is_argparse_s_and_names_the_command(capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["bench", "cross-entropy", "--precisions", "fp16"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "p2rec bench cross-entropy: error: argument --precisions: invalid choice: 'fp16'" in err
    with pytest.raises(SystemExit):
        cli(["bench", "no-such-command"])
