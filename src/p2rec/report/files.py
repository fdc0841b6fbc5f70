"""The files the report stage writes (names only: the workflow's paths live in p2rec.workflow.targets)."""
from __future__ import annotations

#: the tables the workflow's paper_tables rule declares and build_tables writes
TABLE_FILES = ("main.md", "main.csv", "main.tex", "significance.csv", "robustness.md", "robustness.csv",
               "robustness.tex", "efficiency.md", "efficiency.csv", "verdict.md", "verdict.csv", "verdict.tex")
#: the verdict tables (one per dataset x backbone inside each file), part of TABLE_FILES
VERDICT_FILES = ("verdict.md", "verdict.csv", "verdict.tex")
PLOT_KINDS = ("scores", "convergence")
