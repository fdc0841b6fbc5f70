"""Backbone reproduction grid on one machine: many `p2rec train` runs at once (one process each).

The workflow places one training job per device; a single large GPU is mostly idle under one small
recommender, so this script runs several `python -m p2rec train` processes side by side on it instead. Every
run gets exactly the settings the workflow would give it (`p2rec.workflow.config.train_settings` on the same
config.yaml), with `train.loss` set per grid cell, and writes the same run folder:

    OUT/{loss}/{dataset}/{backbone}/none/seed{seed}/{metrics.json, ranks.csv.gz, timing.json, ...}

Runs whose metrics.json exists are skipped, so an interrupted grid resumes. Queue order is seed-major, so
an interrupted grid has every cell at seed 1 before any at seed 2.

    python scripts/reproduce_grid.py --data-root results/data --out experiments/grid --jobs 12 \
        --threads 1 --device cuda
    python scripts/reproduction_table.py --runs ce=experiments/grid/ce --runs bce=experiments/grid/bce
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from p2rec.workflow.config import train_settings, validate_config  # noqa: E402


def grid_cells(datasets, backbones, losses, seeds):
    for seed in seeds:
        for dataset in datasets:
            for backbone in backbones:
                for loss in losses:
                    yield dataset, backbone, loss, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--data-root", default="results/data", help="prepared data: {root}/{dataset}/sequences.txt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--datasets", nargs="+", default=["beauty", "yelp", "ml-1m"])
    parser.add_argument("--backbones", nargs="+", default=["gru4rec", "caser", "sasrec", "fmlprec"])
    parser.add_argument("--losses", nargs="+", default=["bce", "ce"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="DATASET/BACKBONE",
                        help="cells to leave out, e.g. beauty/sasrec (their seeds were run elsewhere)")
    parser.add_argument("--done", action="append", default=[], metavar="LOSS=DIR",
                        help="runs made elsewhere, laid out DIR/{dataset}/{backbone}/none/seed{seed}: a cell whose "
                             "metrics.json is there is not run again (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs to do and stop")
    parser.add_argument("--train-override", type=json.loads, default={},
                        help='JSON merged into every run\'s train settings, e.g. \'{"weight_decay": 1e-4}\'')
    parser.add_argument("--model-override", type=json.loads, default={},
                        help='JSON merged into every run\'s backbone parameters, e.g. \'{"dropout": 0.1}\'')
    args = parser.parse_args()

    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    out = Path(args.out)
    done_elsewhere = []
    for item in args.done:
        loss, sep, folder = item.partition("=")
        if not sep or loss not in ("bce", "ce") or not Path(folder).is_dir():
            sys.exit(f"error: --done {item!r}: expected LOSS=DIR with LOSS bce or ce and DIR an existing folder")
        done_elsewhere.append((loss, Path(folder)))
    queue = []
    for dataset, backbone, loss, seed in grid_cells(args.datasets, args.backbones, args.losses, args.seeds):
        if f"{dataset}/{backbone}" in args.exclude:
            continue
        run_dir = out / loss / dataset / backbone / "none" / f"seed{seed}"
        if (run_dir / "metrics.json").exists():
            continue
        cell = Path(dataset) / backbone / "none" / f"seed{seed}" / "metrics.json"
        if any(loss == done_loss and (folder / cell).exists() for done_loss, folder in done_elsewhere):
            continue
        data = Path(args.data_root) / dataset / "sequences.txt"
        if not data.exists():
            sys.exit(f"error: prepared data {data} not found (run the workflow's prepare_dataset for '{dataset}')")
        settings = train_settings(config, dataset, backbone)
        settings["train"].update(args.train_override)
        settings["model"].update(args.model_override)
        settings["train"].update(loss=loss, device=args.device, threads=args.threads)
        queue.append((run_dir, [sys.executable, "-m", "p2rec", "train", "--data", str(data),
                                "--settings", json.dumps(settings, sort_keys=True), "--seed", str(seed),
                                "--out-dir", str(run_dir), "--no-progress", "--record-failure", "true"]))
    print(f"{len(queue)} runs to do, {args.jobs} at once", flush=True)
    if args.dry_run:
        for run_dir, _ in queue:
            print(run_dir.relative_to(out))
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    running: list[tuple[Path, subprocess.Popen, float]] = []

    def stop(signum, frame):
        # a time limit or Ctrl-C: stop the runs in flight (their checkpoints let a later call resume them)
        for _, proc, _ in running:
            proc.terminate()
        for _, proc, _ in running:
            proc.wait()
        print(f"stopped by signal {signum}: {len(running)} runs interrupted, {len(queue)} not started", flush=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    start = time.time()
    done = 0
    while queue or running:
        while queue and len(running) < args.jobs:
            run_dir, cmd = queue.pop(0)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(run_dir.parent / f"{run_dir.name}.log", "w")
            running.append((run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
        time.sleep(1.0)
        for item in list(running):
            run_dir, proc, began = item
            if proc.poll() is None:
                continue
            running.remove(item)
            done += 1
            summary = "no metrics"
            metrics_path = run_dir / "metrics.json"
            if metrics_path.exists():
                metrics = json.loads(metrics_path.read_text())
                if metrics.get("status", "ok") == "ok":
                    summary = (f"test hr@10 {metrics['test']['hr@10']:.4f} ndcg@10 {metrics['test']['ndcg@10']:.4f}"
                               f" epochs {metrics['epochs']}")
                else:
                    summary = f"failed: {metrics.get('reason', '?')[:200]}"
            print(f"[{done}] {run_dir.relative_to(out)} rc={proc.returncode} {time.time() - began:.0f}s {summary}"
                  f" (elapsed {time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
