"""``python -m p2rec.workflow.gpu_lease --n N -- command ...``: run a command on N GPUs of its own.

Also available as ``python -m p2rec lease --n N -- command ...``. See p2rec.workflow.gpu for how devices are found
and held, and how ``--slots``/``P2REC_GPU_SLOTS`` lets several small jobs share one device. Every workflow
rule with ``resources: gpu=N`` runs its command this way (rules/common.smk).
"""
from __future__ import annotations

import argparse
import sys

from p2rec import P2RecError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1,
                   help="number of GPUs the command needs (0 = CPU); with several slots per GPU, in slots: "
                        "fewer than --slots = slots of one shared GPU, a multiple of it = whole GPUs")
    p.add_argument("--slots", default=None,
                   help="jobs that may share one GPU (default $P2REC_GPU_SLOTS or 1: every job gets whole GPUs)")
    p.add_argument("--lock-dir", default=None,
                   help="folder of the per-device lock files (default $P2REC_GPU_LOCK_DIR or <tmp>/p2rec-gpu-locks)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds without free GPUs (default $P2REC_GPU_WAIT_TIMEOUT "
                        "or wait for ever)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between tries while waiting")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")


def _run(args) -> int:
    from p2rec.workflow.gpu import run_leased

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return run_leased(args.n, command, slots=args.slots, lock_dir=args.lock_dir, timeout=args.timeout,
                      poll=args.poll)


def register(sub) -> None:
    p = sub.add_parser("lease", help="run a command on N GPUs (or GPU slots) of its own (flock lease)")
    add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2rec.workflow.gpu_lease", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except P2RecError as err:
        print(f"p2rec gpu lease: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
