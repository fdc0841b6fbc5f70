"""``p2rec bench <name>``: benchmarks, profiles and comparisons outside the workflow, and ``recbole-run``, the
workflow's RecBole runs (rules/recbole.smk).

The options of every command are declared here, without importing the benchmarks themselves: the CLI is
built on every workflow step, and the benchmarks import torch. A command's module is imported once the
command line names it; its ``run(args)`` does the work, and its optional ``check_args(args)`` returns a usage
error (printed as argparse prints one, exit 2) or fills defaults that need the module (e.g. every registered
backbone).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from p2rec.cli import bool_arg, json_arg

REPO = Path(__file__).resolve().parents[3]
# the keys of recbole_compare.RECBOLE_MODELS and LOSSES, named here so that building the CLI imports no torch
RECBOLE_MODELS = ["caser", "gru4rec", "sasrec"]
RECBOLE_LOSSES = ["ce", "one-negative"]


class _CommandParser(argparse.ArgumentParser):
    """The parser of one bench command: records the command line as given (results files quote it) and runs
    the command's own checks, so they fail like any other usage error."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.argv = ["bench", namespace.bench_command, *args]
        check = getattr(importlib.import_module(namespace.bench_module), "check_args", None)
        problem = check(namespace) if check else None
        if problem:
            self.error(problem)
        return namespace, extras


def invalid_choice(option: str, values, choices) -> str | None:
    """argparse's message for the first of ``values`` not among ``choices``: for choices checked after parsing,
    because they come from a module the CLI does not import up front."""
    for value in values:
        if value not in choices:
            return f"argument {option}: invalid choice: {value!r} (choose from {', '.join(map(repr, sorted(choices)))})"
    return None


def invoke(args: argparse.Namespace):
    """Run the parsed bench command and return its result (rows, a dict, ...)."""
    return getattr(importlib.import_module(args.bench_module), args.bench_function)(args)


def _main(args: argparse.Namespace) -> int:
    invoke(args)
    return 0


def register(sub) -> None:
    group = sub.add_parser("bench", help="benchmarks, profiles and comparisons (recbole-run: the workflow's RecBole "
                                         "runs)", description="benchmarks, profiles and comparisons")
    commands = group.add_subparsers(dest="bench", required=True, metavar="NAME", parser_class=_CommandParser)
    for name, (module, function, help_text, add_arguments) in COMMANDS.items():
        p = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=_main, bench_command=name, bench_module=f"p2rec.bench.{module}", bench_function=function)


# ------------------------------------------------------------------ options of each command

def _backbones(p) -> None:
    p.add_argument("--data", required=True, help="prepared sequences.txt (results/data/<dataset>/sequences.txt)")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--epochs-to-time", type=int, default=1,
                   help="training epochs timed per repeat (0: time the evaluation only)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv and <out>.md")
    p.add_argument("--backbones", nargs="+", default=None, help="default: every registered one")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--precisions", nargs="+", default=["fp32"],
                   help="train.precision values to time side by side (default: fp32 only)")
    p.add_argument("--compare-generic", action="store_true",
                   help="also time the reference evaluation path (full forward, padded batches) and report the "
                        "speed-up and the share of identical ranks")


def _cross_entropy(p) -> None:
    p.add_argument("--items", type=int, nargs="+", default=[12102], help="classes incl. padding (Beauty: 12,102)")
    p.add_argument("--rows", type=int, nargs="+", default=[256], help="target positions per batch")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.csv")


def _eval_batch(p) -> None:
    p.add_argument("--data", required=True, help="prepared sequences.txt")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2048, 256], help="the first is the reference")
    p.add_argument("--backbones", nargs="+", default=None, help="default: every registered one")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv and <out>.md")


def _profile_epoch(p) -> None:
    p.add_argument("--data", type=Path, required=True, help="prepared sequences.txt")
    p.add_argument("--backbone", default="sasrec")
    p.add_argument("--samples", choices=["sequences", "prefixes"], default="sequences")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--batches", type=int, default=100, help="batches timed (the epoch is extrapolated)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def _compare_runs(p) -> None:
    p.add_argument("--treatment", required=True, help="folder of seed<N>/ runs")
    p.add_argument("--comparator", required=True, help="folder of seed<N>/ runs")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--metrics", nargs="+", default=["hr@10", "ndcg@10"])
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv and <out>.md")


def _recbole(p) -> None:
    """Options of ``bench recbole``, which ``bench seen-item-scores`` shares (it trains the same p2rec side)."""
    p.add_argument("--data", default="results/data/beauty/sequences.txt", help="prepared sequences.txt")
    p.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"], choices=RECBOLE_MODELS)
    p.add_argument("--loss", default="ce", choices=RECBOLE_LOSSES,
                   help="ce: full softmax in both; one-negative: RecBole BPR vs p2rec bce, one sampled negative")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for both libraries (0: default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                   help="p2rec's train.precision values, one p2rec run each (dtype of the cross-entropy's matrix "
                        "products; RecBole always fp32)")
    p.add_argument("--mask-history", action="store_true",
                   help="mask seen items in p2rec's ranking (RecBole never does; off = matched)")
    p.add_argument("--model-override", type=json.loads, default={},
                   help="JSON merged into p2rec's backbone parameters, e.g. '{\"dropout\": 0.5}' (RecBole's SASRec "
                        "dropout); RecBole's settings never change")
    p.add_argument("--samples", nargs="+", default=["sequences"], choices=["sequences", "prefixes"],
                   help="p2rec's train.samples values, one p2rec run each (per precision): every position of a "
                        "user's sequence in one causal pass, or each prefix its own sample with the loss at its "
                        "end (RecBole's way)")
    p.add_argument("--p2rec-only", action="store_true",
                   help="run p2rec alone (ablations of p2rec's side against RecBole rows measured before)")
    p.add_argument("--recbole-results", nargs="+", default=[], metavar="JSON",
                   help="result files of RecBole runs made before (recbole_worker.py's result.json, e.g. a run "
                        "resumed to its end) used as those models' RecBole rows instead of training RecBole again")
    p.add_argument("--venv", default=str(REPO / ".bench" / "recbole-venv"))
    p.add_argument("--work-dir", default=str(REPO / ".bench" / "recbole-work"))
    p.add_argument("--out-dir", default=str(REPO / "results" / "reproduction"))
    p.add_argument("--python", default=None, help="interpreter that creates the venv (default: this one)")


def _recbole_run(p) -> None:
    p.add_argument("--data", required=True, help="prepared sequences.txt")
    p.add_argument("--settings", type=json_arg, required=True,
                   help="the run's settings (JSON from p2rec.bench.recbole_runs.run_settings)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True, help="the run folder: metrics.json, ranks.csv.gz, ... as 'p2rec train'")
    p.add_argument("--work-dir", default=None, help="RecBole's files: atomic data, job, log, saved model "
                                                    "(default <out-dir>/recbole)")
    p.add_argument("--provenance", type=json_arg, default=None, help="the run's lineage (JSON): provenance.json")
    p.add_argument("--restore-from", default=None, action="append",
                   help="a published run folder (repeatable; the first match wins): when its provenance has the same lineage, copy it instead of training")
    p.add_argument("--record-failure", default="false", type=bool_arg, metavar="BOOL",
                   help="on any error write a failed result and exit 0, as 'p2rec train --record-failure'")
    p.add_argument("--venv", default=str(REPO / ".bench" / "recbole-venv"),
                   help="RecBole's side venv, made on first use, where this interpreter has no RecBole")
    p.add_argument("--python", default=None, help="interpreter that creates the venv (default: this one)")


def recbole_run(args) -> dict:
    """``bench recbole-run``, the workflow's RecBole rule: restore, train, or record a failure, as ``p2rec train``
    does (p2rec.workflow.experiment.run_job, outside the RecBole runs' code version)."""
    from p2rec.bench.recbole_runs import train_run
    from p2rec.workflow.experiment import run_job

    return run_job(args.out_dir, args.seed, args.provenance, args.restore_from, args.record_failure,
                   lambda: train_run(args.data, args.settings, args.seed, args.out_dir, work_dir=args.work_dir,
                                     venv=args.venv, python=args.python, provenance=args.provenance))


def _check_cuda(p) -> None:
    p.add_argument("--data", required=True, help="prepared sequences.txt")
    p.add_argument("--out", default=None, help="write the summary as JSON here")
    p.add_argument("--device", default="cuda", help="device under test (cpu only to check this command)")


def _summary(p) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--backbone", default="sasrec")
    p.add_argument("--variants", nargs="+", default=["none", "cf_init", "p2rec"])
    p.add_argument("--treatment", default="p2rec")
    p.add_argument("--sft", default="p2rec", help="LLM stage folder results/llm/{dataset}/{sft}/")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="results/p2rec")
    p.add_argument("--tag", default="", help="suffix of the output names and of the categories' variant label "
                                             "(an ablation's results beside the default's)")


def _reproduction_table(p) -> None:
    p.add_argument("--runs", action="append", required=True, help="LOSS=FOLDER (repeatable)")
    p.add_argument("--published", default="results/reproduction/published.csv")
    p.add_argument("--out", default="results/reproduction/table")
    p.add_argument("--datasets", nargs="+", default=["beauty", "yelp", "ml-1m"])


def _sft(p) -> None:
    p.add_argument("--data", required=True, help="sequences.txt (only the training split is read)")
    p.add_argument("--model", required=True,
                   help="hub id or folder of a causal LM ('packaged' converts into --converted-dir)")
    p.add_argument("--converted-dir", default="models/smollm2-135m-instruct")
    p.add_argument("--settings", type=json_arg, default={}, help="llm settings (JSON) over the schema defaults")
    p.add_argument("--item-table", default=None, help="stage-0 table (default: seeded random, throughput only)")
    p.add_argument("--categories", default=None, help="categories.npy (default: seeded random)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="steps per mode per round")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result as JSON here")


def _sft_table(p) -> None:
    p.add_argument("--inputs", nargs="+", required=True, help="'bench sft' JSON files, named <dataset>.json")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.csv and <out>.md")


def _llm(p) -> None:
    p.add_argument("--data", required=True, help="sequences.txt (only the training split is read)")
    p.add_argument("--model", default="packaged", help="hub id or folder of a causal LM ('packaged' converts into --converted-dir)")
    p.add_argument("--converted-dir", default="models/smollm2-135m-instruct")
    p.add_argument("--settings", type=json_arg, default={}, help="llm settings (JSON) over the schema defaults")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sft-steps", type=int, default=4, help="SFT steps per configuration per round")
    p.add_argument("--extract-items", type=int, default=512, help="items per configuration per round")
    p.add_argument("--fidelity-steps", type=int, default=None,
                   help="also train before and after paths this many steps from one start (0 = one epoch)")
    p.add_argument("--fidelity-data", default=None, help="sequences.txt of the fidelity check (default --data)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output prefix: writes <out>.json, <out>.csv and <out>.md")


# name -> (module under p2rec.bench, its function that runs the command, help, options)
COMMANDS = {
    "backbones": ("backbones", "run", "speed of every registered backbone on one prepared dataset, side by side",
                  _backbones),
    "cross-entropy": ("cross_entropy", "run", "full-softmax cross-entropy, forward + backward, three ways side by "
                                              "side on this machine's CPU", _cross_entropy),
    "eval-batch": ("eval_batch", "run", "full-ranking time of every backbone at several evaluation batch sizes",
                   _eval_batch),
    "profile-epoch": ("profile_epoch", "run", "where a training epoch's time goes on the CPU", _profile_epoch),
    "compare-runs": ("compare_runs", "run", "two sets of runs of one cell compared user by user", _compare_runs),
    "seen-item-scores": ("seen_items", "run", "how often a trained model scores the user's own seen items above "
                                              "the target (options as 'bench recbole')", _recbole),
    "check-cuda": ("check_cuda", "run", "the LLM stages' CUDA path against their CPU path, with a tiny LLM",
                   _check_cuda),
    "summary": ("summary", "run", "summary of one dataset x backbone P2Rec experiment from the workflow's files",
                _summary),
    "reproduction-table": ("reproduction_table", "run", "our backbones (BCE and CE) next to published "
                                                        "full-ranking numbers", _reproduction_table),
    "recbole": ("recbole_compare", "run", "SASRec, GRU4Rec and Caser trained by RecBole 1.2.1 and by p2rec on the "
                                          "same split", _recbole),
    "recbole-run": ("commands", "recbole_run", "one backbone trained by RecBole 1.2.1 into a p2rec run folder (the "
                                               "workflow's RecBole rule)", _recbole_run),
    "sft": ("sft", "run", "user- vs instance-level SFT throughput side by side in one process", _sft),
    "llm": ("llm", "run", "the LLM stages' before and after paths (shared prefix, merged adapters, bfloat16) side "
                          "by side in one process: tokens/s, MFU, state differences, fidelity", _llm),
    "sft-table": ("sft", "run_table", "one table (CSV + markdown) of several 'bench sft' results", _sft_table),
}
