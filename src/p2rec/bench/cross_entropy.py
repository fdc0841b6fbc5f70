"""Full-softmax cross-entropy, forward + backward, three ways side by side on this machine's CPU in one run:

- ``autograd``: the [rows x items] logits materialised and differentiated by autograd (F.cross_entropy);
- ``recompute``: row chunks, logits recomputed chunk by chunk in the backward pass (p2rec before the
  fused version; kept here as the baseline);
- ``fused``: row chunks, the gradient summed in the forward pass from each chunk's softmax
  (``p2rec.models.losses.chunked_softmax_ce``).

Each shape is a training batch: ``--rows`` target positions (256 = one batch of prefix samples), ``--items``
classes. The ways are timed in turn, repeat after repeat, so load on a shared machine hits them alike;
the median is reported, with each way's time relative to ``fused``. The three must compute the same
gradients (relative difference at most 1e-4 in fp32, 2e-2 in bf16), or the command fails.

    python -m p2rec bench cross-entropy --items 12102 --rows 256 1536 --precisions fp32 bf16 --threads 1
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from p2rec import P2RecError
from p2rec.bench.commands import invalid_choice
from p2rec.io import command_line, markdown_rows, write_table_files
from p2rec.models.losses import PRECISIONS, ce_chunk_rows, chunked_softmax_ce
from p2rec.training.trainer import environment


class _RecomputeCE(torch.autograd.Function):
    """The baseline: log-sum-exp in the forward pass, logits and softmax computed again in the backward."""

    @staticmethod
    def forward(ctx, hidden, table, targets, chunk, compute_dtype):
        dtype = hidden.dtype
        h_c, t_c = hidden.to(compute_dtype or dtype), table.to(compute_dtype or dtype)
        lse = torch.empty(hidden.shape[0], dtype=dtype)
        for s in range(0, hidden.shape[0], chunk):
            logits = (h_c[s:s + chunk] @ t_c.T).to(dtype)
            logits[:, 0] = -math.inf
            lse[s:s + chunk] = torch.logsumexp(logits, 1)
        ctx.save_for_backward(h_c, t_c, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return (lse - (hidden * table[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad_out):
        h_c, t_c, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty(h_c.shape, dtype=ctx.dtype)
        grad_table = torch.zeros(t_c.shape, dtype=ctx.dtype)
        for s in range(0, h_c.shape[0], ctx.chunk):
            h = h_c[s:s + ctx.chunk]
            logits = (h @ t_c.T).to(ctx.dtype)
            logits[:, 0] = -math.inf
            prob = torch.exp_(logits.sub_(lse[s:s + ctx.chunk, None]))
            prob[torch.arange(len(h)), targets[s:s + ctx.chunk]] -= 1
            prob.mul_(grad_out / h_c.shape[0])
            prob_c = prob.to(h.dtype)
            grad_hidden[s:s + ctx.chunk] = prob_c @ t_c
            grad_table += prob_c.T @ h
        return grad_hidden, grad_table, None, None, None


def _autograd(hidden, table, targets, precision):
    dtype = PRECISIONS[precision] or hidden.dtype
    logits = (hidden.to(dtype) @ table.to(dtype).T).float()
    logits = torch.cat([torch.full_like(logits[:, :1], -math.inf), logits[:, 1:]], 1)
    return F.cross_entropy(logits, targets)


WAYS = {
    "autograd": _autograd,
    "recompute": lambda h, t, y, p: _RecomputeCE.apply(h, t, y, ce_chunk_rows(t.shape[0], "cpu"), PRECISIONS[p]),
    "fused": lambda h, t, y, p: chunked_softmax_ce(h, t, y, precision=p),
}


# largest relative gradient difference accepted between the ways (bf16: rounding of the products' inputs)
AGREEMENT = {"fp32": 1e-4, "bf16": 2e-2}


def measure(rows: int, items: int, hidden: int, precision: str, repeat: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    h = (0.5 * torch.randn(rows, hidden, generator=gen)).requires_grad_()
    t = (0.5 * torch.randn(items, hidden, generator=gen)).requires_grad_()
    y = torch.randint(1, items, (rows,), generator=gen)
    seconds = {name: [] for name in WAYS}
    grads = {}
    for r in range(repeat + 1):  # the first round warms up and is not counted
        for name, way in WAYS.items():
            h.grad = t.grad = None
            t0 = time.perf_counter()
            way(h, t, y, precision).backward()
            if r:
                seconds[name].append(time.perf_counter() - t0)
            grads[name] = (h.grad.clone(), t.grad.clone())
    # the ways must agree, or their timings compare different things
    ref = grads["autograd"]
    agree = max(((g - r).norm() / r.norm()).item() for name in WAYS for g, r in zip(grads[name], ref))
    if agree > AGREEMENT[precision]:
        raise P2RecError(f"{rows} rows x {items} items, {precision}: the gradients of the three ways differ by "
                         f"{agree:.1e} (relative), more than {AGREEMENT[precision]:.0e}")
    med = {name: statistics.median(v) * 1000 for name, v in seconds.items()}
    return {"rows": rows, "items": items, "precision": precision,
            **{f"{name}_ms": round(ms, 2) for name, ms in med.items()},
            **{f"{name}_vs_fused": round(ms / med["fused"], 2) for name, ms in med.items() if name != "fused"},
            "max_rel_grad_diff": f"{agree:.1e}"}


def check_args(args) -> str | None:
    return invalid_choice("--precisions", args.precisions, PRECISIONS)


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows = [measure(n, v, args.hidden, p, args.repeat)
            for v in args.items for n in args.rows for p in args.precisions]
    columns = list(rows[0])
    env = environment()
    md = "\n".join([f"# Full-softmax cross-entropy, forward + backward (median of {args.repeat}, milliseconds)", "",
                    *markdown_rows(rows, columns), "",
                    f"Command: `{command_line(args.argv)}`",
                    f"Machine: {', '.join(f'{k} {v}' for k, v in env.items())}", ""])
    print(md)
    if args.out:
        write_table_files(args.out, rows, columns, md)
    return rows
