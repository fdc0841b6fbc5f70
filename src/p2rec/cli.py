"""Command line: ``python -m p2rec <stage> ...``. Every workflow rule calls one of these stages.

Each stage module exposes ``register(subparsers)``; adding a stage is one module plus one line in
``STAGE_MODULES``. Errors in user input print one clear line (exit 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from p2rec import P2RecError

STAGE_MODULES = [
    "p2rec.commands",  # prepare, train, gather, check-config
    "p2rec.report.commands",  # collect, tables, plots
    "p2rec.workflow.gpu_lease",  # lease (run a command on N GPUs of its own)
    "p2rec.workflow.commands",  # publish, status
    "p2rec.llm.commands",  # convert-llm, categories, sft, extract, reduce, parse-eval
    "p2rec.data.commands",  # prepare-items, attribute-eval (item side information)
    "p2rec.baselines.commands",  # text-embed (the text_init baseline)
    "p2rec.bench.commands",  # bench <name>: benchmarks, profiles and comparisons outside the workflow
]


def json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None


def bool_arg(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2rec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name in STAGE_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except P2RecError as err:
        print(f"p2rec {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)
