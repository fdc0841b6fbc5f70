"""Workflow stages: publish an experiment's compact results, and say which published runs are stale."""
from __future__ import annotations

import json
from pathlib import Path

from p2rec.cli import json_arg


def register(sub) -> None:
    p = sub.add_parser("publish", help="copy an experiment's compact files into its published folder with a MANIFEST")
    p.add_argument("--config", type=json_arg, required=True, help="the resolved configuration (JSON)")
    p.add_argument("--files", nargs="*", default=[],
                   help="files to publish: paths in the experiment's working folder (or, for restored records, its "
                        "published folder), or relative to it")
    p.add_argument("--manifest", required=True, help="<results_dir>/<experiment>/MANIFEST.json")
    p.add_argument("--index", required=True, help="<results_dir>/INDEX.md, regenerated")
    p.add_argument("--receipt", default=None, help="also write a copy of the MANIFEST here (the workflow's output)")
    p.set_defaults(func=_publish)

    p = sub.add_parser("status", help="published runs whose code version differs from the current checkout")
    p.add_argument("--results", default="results", help="the published results folder (results)")
    p.add_argument("--verbose", action="store_true", help="list every stale run and its stale stages")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--write-index", action="store_true",
                   help="also rewrite <results>/INDEX.md (as the publish rule does), e.g. after results came in by git")
    p.set_defaults(func=_status)


def _publish(args):
    from p2rec.workflow.experiment import experiment_relative, publish

    manifest = publish(args.config, [experiment_relative(args.config, f) for f in args.files], args.manifest,
                       args.index)
    if args.receipt:
        from p2rec.io import write_json

        write_json(args.receipt, manifest)
    print(json.dumps({k: manifest[k] for k in ("experiment", "git_commit", "files", "date")}))


def _status(args):
    from p2rec.workflow.experiment import results_status, write_index

    entries = results_status(args.results)
    if args.write_index:
        write_index(args.results, Path(args.results) / "INDEX.md")
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    total = current = 0
    print(f"{'experiment':<28} {'runs':>6} {'current':>8} {'stale':>6}  made by")
    for e in entries:
        total += e["runs"]
        current += e["current"]
        made = (e["manifest"] or {}).get("command") or (f"{e['note']} (README.md)" if e.get("note") else
                                                         "archive (no MANIFEST)")
        print(f"{e['experiment']:<28} {e['runs']:>6} {e['current']:>8} {e['runs'] - e['current']:>6}  {made}")
        if args.verbose:
            for run, stages in sorted(e["stale"].items()):
                print(f"    {run}: {', '.join(stages)}")
    print(f"{'all':<28} {total:>6} {current:>8} {total - current:>6}")
    return 0
