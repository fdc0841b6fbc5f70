"""GRU4Rec (Hidasi et al., ICLR 2016) as a next-item encoder: item embedding, embedding dropout, a GRU,
and a linear map from the GRU state to the (tied) item-embedding space.

Left padding would otherwise feed the GRU a run of padding inputs that moves its state away from zero
before the first real item (the bias terms act even on a zero input). The sequences are therefore
shifted to the left edge of the batch, run from a zero state, and shifted back: every real position
sees exactly its own prefix, whatever the amount of padding. A GRU is causal by construction.
"""
from __future__ import annotations

import torch
from torch import nn

from p2rec.models.losses import FastDropout
from p2rec.models.base import SequentialBackbone


class GRU4Rec(SequentialBackbone):
    defaults = {"num_layers": 1, "dropout": 0.3}

    def __init__(self, num_items: int, hidden: int, max_len: int, num_layers: int = 1, dropout: float = 0.3):
        super().__init__(num_items, hidden, max_len)
        self.emb_drop = FastDropout(dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=num_layers, batch_first=True, bias=True)
        self.dense = nn.Linear(hidden, hidden)
        self.apply(self._init_weights)  # the item table at the suite's common scale (init_std)
        # the inner layers as RecBole's GRU4Rec initialises them (Xavier): with the small item-table scale a
        # std-0.02 output layer leaves the scores near zero for hundreds of steps
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(weight)
            else:
                nn.init.zeros_(weight)
        nn.init.xavier_normal_(self.dense.weight)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        seqs = seqs[:, -self.max_len:]
        b, t = seqs.shape
        real = seqs > 0
        pad = t - real.sum(1, keepdim=True)  # [B, 1] leading zeros of each row
        cols = torch.arange(t, device=seqs.device).unsqueeze(0)
        to_left = (cols + pad) % t  # row-wise rotation: real items first, padding after them
        x = self.emb_drop(self.item_emb(seqs.gather(1, to_left)))
        out, _ = self.gru(x)
        out = self.dense(out)
        back = (cols - pad) % t
        out = out.gather(1, back.unsqueeze(-1).expand(b, t, out.shape[-1]))
        return out * real.unsqueeze(-1).to(out.dtype)
