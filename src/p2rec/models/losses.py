"""Training losses over a tied item table.

``chunked_softmax_ce`` is the full-softmax cross-entropy computed in row chunks with the gradient
written by hand: it never materialises the [positions x items] logit matrix for autograd, which on a
2-core CPU halves the cost of an epoch. The gradient is summed in the forward pass, from each chunk's
softmax, so no logit is computed twice (``p2rec bench cross-entropy`` times it).
With ``precision="bf16"`` (``train.precision``) its three matrix products run in bfloat16 while the
logits, log-sum-exp, softmax and accumulated gradients keep the inputs' float32: about 2x faster on a
CPU with AVX512-BF16, at the rounding of bfloat16 inputs (relative gradient error ~0.4%).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, table, targets, chunk, compute_dtype):
        n, dtype = hidden.shape[0], hidden.dtype
        # .to() returns its input when the dtype already matches: at full precision nothing is copied
        h_c, t_c = hidden.to(compute_dtype or dtype), table.to(compute_dtype or dtype)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        # gradients are summed here, while each chunk's softmax is at hand: the backward pass would have to
        # recompute every chunk's logits (one of four matrix products) and its exponentials
        grad_hidden = torch.empty(h_c.shape, dtype=dtype, device=hidden.device) if need_grad else None
        grad_table = torch.zeros(t_c.shape, dtype=dtype, device=hidden.device) if need_grad else None
        for s in range(0, n, chunk):
            h = h_c[s:s + chunk]
            logits = (h @ t_c.T).to(dtype)
            logits[:, 0] = -math.inf  # padding id is never a class
            prob = torch.softmax(logits, 1)
            rows, y = torch.arange(len(h), device=h.device), targets[s:s + chunk]
            # log-sum-exp = target logit - log(target probability): no extra pass over the logits; where the
            # target's probability underflowed to 0 it is computed in full (the check is one host sync per
            # chunk: a few per batch on a GPU, where chunks are large)
            p_y = prob[rows, y]
            lse[s:s + chunk] = logits[rows, y] - p_y.log()
            lost = p_y <= 0
            if bool(lost.any()):
                lse[s:s + chunk][lost] = torch.logsumexp(logits[lost], 1)
            if not need_grad:
                continue
            prob[rows, y] -= 1  # d(loss)/d(logits), unscaled
            if h.dtype == dtype:
                grad_hidden[s:s + chunk] = prob @ t_c
                grad_table.addmm_(prob.T, h)
            else:  # products in the compute dtype, accumulated at full precision
                prob_c = prob.to(h.dtype)
                grad_hidden[s:s + chunk] = prob_c @ t_c
                grad_table += prob_c.T @ h
        target_logit = (hidden * table[targets]).sum(1)
        ctx.save_for_backward(grad_hidden, grad_table)
        ctx.n = n
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_table = ctx.saved_tensors
        scale = grad_out / ctx.n
        return grad_hidden * scale, grad_table * scale, None, None, None


# dtype of the matrix products; None: the inputs' own (float32 in training)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def chunked_softmax_ce(hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
                       precision: str = "fp32") -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ table.T`` against ``targets`` (column 0 = padding, excluded).
    ``chunk``: rows per chunk (default: ``ce_chunk_rows`` for the table's device and size); ``precision``:
    dtype of the matrix products, ``fp32`` or ``bf16`` (``train.precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if chunk is None:
        chunk = ce_chunk_rows(table.shape[0], table.device)
    return _ChunkedSoftmaxCE.apply(hidden, table, targets, chunk, PRECISIONS[precision])


def ce_chunk_rows(num_classes: int, device: torch.device | str) -> int:
    """Rows per chunk of the chunked cross-entropy. On a CPU 64 rows keep a chunk's logits in cache; on a
    GPU every chunk costs a handful of kernel launches, so a chunk holds up to 2^24 logits (64 MB in fp32):
    an ML-1M batch (51,200 positions) is 11 chunks there instead of 800."""
    if torch.device(device).type == "cpu":
        return 64
    return max(64, (1 << 24) // max(1, num_classes))


class FastDropout(nn.Module):
    """Inverted dropout from a uniform draw: same distribution as nn.Dropout, ~2x faster on CPU
    (``bernoulli_`` dominated the profile of a training step)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep / (1.0 - self.p)
