"""Rendering helpers shared by the tables: number formats, escaping, markdown / LaTeX / CSV writers."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from p2rec.io import atomic_path

#: significance (seed-level test, after the correction) and staleness marks, per output format
SIG_MARK = {"md": r"\*", "tex": r"$^{*}$", "text": "*"}
STALE_MARK = {"md": "†", "tex": r"$^{\dagger}$", "text": "†"}
STALE_CAPTION = ("† : from runs made with code other than the current checkout "
                 "(see `python -m p2rec status`).")

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^{\dagger}$",
                "<": r"\textless{}", ">": r"\textgreater{}", "`": r"\`{}", "—": "--"}


def tex_escape(text: str) -> str:
    text = "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))
    return text.encode("ascii", "replace").decode("ascii")


def rst_escape(text: str) -> str:
    return re.sub(r"([\\*_`|])", r"\\\1", str(text))


def metric_label(metric: str) -> str:
    name, k = metric.split("@")
    return f"{ {'hr': 'HR', 'ndcg': 'NDCG'}.get(name, name.upper()) }@{k}".replace(" ", "")


def fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def fmt_pct(x: float, digits: int = 2) -> str:
    """A relative effect as a signed percentage ('n/a' when undefined)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x * 100:+.{digits}f}%"


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_simple(frame: pd.DataFrame, caption: str, label: str) -> tuple[str, str]:
    """Markdown and LaTeX of a plain table (strings already formatted)."""
    frame = frame.astype(str)
    md = [f"Table: {caption}", ""]
    md.append("| " + " | ".join(frame.columns) + " |")
    md.append("|" + "|".join(["---"] * len(frame.columns)) + "|")
    md += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    tex = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex_escape(caption)}}}",
           rf"\label{{{label}}}", rf"\begin{{tabular}}{{{'l' * len(frame.columns)}}}", r"\hline",
           " & ".join(tex_escape(c) for c in frame.columns) + r" \\", r"\hline"]
    tex += [" & ".join(tex_escape(x) for x in row) + r" \\" for row in frame.itertuples(index=False)]
    tex += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(Path(path)) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.10g")
