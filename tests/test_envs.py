"""The conda environments (envs/*.yaml) pin what the pip requirement files pin.

requirements*.txt are what scripts/setup.sh installs and CI tests. The conda files repeat those pins instead of
including the files (`-r`), because Snakemake creates an environment from a copy of its file under
.snakemake/conda/, where a relative include no longer resolves; so the copies are checked here, package by
package."""
from __future__ import annotations

import os

import re

import pytest
import yaml

from tests.conftest import REPO

ENVS = REPO / "envs"
STACKS = ["cpu.yaml", "cuda.yaml"]
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*$")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PyPI's normalised name


def _spec(text: str) -> str:
    return ",".join(sorted(part.replace(" ", "") for part in text.split(",") if part.strip()))


def parse_requirement(line: str) -> tuple[str, str] | None:
    """(normalised name, version spec) of one requirement line; None for options, paths and comments."""
    line = line.split(" #", 1)[0].strip()
    if not line or line.startswith(("#", "-")):
        return None
    match = _NAME.match(line.split(";", 1)[0])
    return _key(match.group(1)), _spec(match.group(2))


def requirement_files() -> dict[str, dict[str, str]]:
    return {path.name: dict(filter(None, map(parse_requirement, path.read_text(encoding="utf-8").splitlines())))
            for path in sorted(REPO.glob("requirements*.txt"))}


def env_packages(text: str) -> tuple[dict[str, str], list[str]]:
    """The pip packages of a conda env file ({name: spec}), and its other pip lines (options, ``-e`` paths)."""
    pip = next((d["pip"] for d in yaml.safe_load(text)["dependencies"] if isinstance(d, dict)), [])
    return dict(filter(None, map(parse_requirement, pip))), [p for p in pip if parse_requirement(p) is None]


def disagreements(env_text: str, requirements: dict[str, dict[str, str]], complete: str = "requirements.txt") -> list[str]:
    """Every package the env file and a requirements file both name with different specs, and every package
    of ``complete`` the env file lacks."""
    packages, _ = env_packages(env_text)
    problems = [f"{name}: {spec or 'unpinned'} in {file}, {packages[name] or 'unpinned'} in the env file"
                for file, pins in requirements.items() for name, spec in pins.items()
                if name in packages and packages[name] != spec]
    problems += [f"{name}: in {complete}, not in the env file" for name in requirements[complete] if name not in packages]
    return problems


@pytest.mark.parametrize("env", STACKS)
def test_each_stack_pins_every_package_of_requirements_txt_alike(env):
    assert disagreements((ENVS / env).read_text(encoding="utf-8"), requirement_files()) == []


def test_the_check_finds_a_changed_pin_and_a_missing_package():
    text = (ENVS / "cpu.yaml").read_text(encoding="utf-8")
    changed = text.replace("- numpy==2.4.6", "- numpy==2.4.5").replace("      - tqdm\n", "")
    assert changed != text
    problems = disagreements(changed, requirement_files())
    assert problems == ["numpy: ==2.4.6 in requirements.txt, ==2.4.5 in the env file",
                        "tqdm: in requirements.txt, not in the env file"]


@pytest.mark.parametrize("env", STACKS)
def test_each_stack_names_how_p2rec_and_the_no_deps_llm_package_go_in(env):
    text = (ENVS / env).read_text(encoding="utf-8")
    _, options = env_packages(text)
    # no relative path: Snakemake builds the env from a copy of the file elsewhere; the rules' jobs import
    # p2rec from the checkout (PYTHONPATH, rules/common.smk), a hand-made env installs it as the comment says
    assert not any(o.startswith("-e") for o in options)
    assert "pip install -e . --no-deps" in text
    assert "export_package_path(workflow.basedir)" in (ENVS / ".." / "rules" / "common.smk").read_text(encoding="utf-8")
    # requirements-llm.txt goes in with --no-deps, which an env file cannot say per package: a comment says how
    no_deps = {parse_requirement(pin) for line in text.splitlines() if "pip install --no-deps" in line
               for pin in line.split("--no-deps", 1)[1].split()}
    assert set(requirement_files()["requirements-llm.txt"].items()) <= no_deps


def test_the_workflow_puts_the_checkout_on_the_jobs_python_path(monkeypatch, tmp_path):
    from p2rec.workflow.experiment import export_package_path

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    export_package_path(tmp_path)
    export_package_path(tmp_path)  # once only
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "src"), "/elsewhere"]


def test_the_cpu_stack_takes_torch_from_the_cpu_index_and_the_cuda_stack_from_pypi():
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in env_packages((ENVS / "cpu.yaml").read_text())[1]
    assert not any("index-url" in line for line in env_packages((ENVS / "cuda.yaml").read_text())[1])


def test_the_recbole_env_has_the_pins_of_recboles_own_venv():
    from p2rec.bench.recbole_compare import PINS

    packages, options = env_packages((ENVS / "recbole.yaml").read_text(encoding="utf-8"))
    assert packages == dict(map(parse_requirement, PINS)) and options == []  # and never p2rec itself
    assert packages["numpy"] == "<2" and packages["recbole"] == "==1.2.1"
