"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Pre-norm blocks with a final LayerNorm as in the authors' code. Attention is causal and never looks at
padding keys (a padding query sees only itself, so no row is empty); padding positions are zeroed after
every block. Scores therefore do not depend on how much left padding a batch carries.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from p2rec.losses import FastDropout
from p2rec.models.base import SequentialBackbone


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_attn = nn.LayerNorm(hidden, eps=1e-8)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = FastDropout(dropout)
        self.attn_dropout = dropout
        self.norm_ffn = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), FastDropout(dropout), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q_in = self.norm_attn(x)
        # split + transpose (not a 5-d permute): its backward is a cheap concat, not a zero-fill
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(q_in).split(d, -1))
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        attn = attn.transpose(1, 2).reshape(b, t, d)
        x = q_in + self.drop(self.out(attn))
        h = self.norm_ffn(x)
        x = h + self.drop(self.ffn(h))
        return x * keep


class SASRec(SequentialBackbone):
    defaults = {"num_layers": 2, "num_heads": 1, "dropout": 0.2}

    def __init__(self, num_items: int, hidden: int, max_len: int, num_layers: int = 2, num_heads: int = 1,
                 dropout: float = 0.2):
        super().__init__(num_items, hidden, max_len)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_drop = FastDropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, num_heads, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.apply(self._init_weights)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        seqs = seqs[:, -self.max_len:]
        t = seqs.shape[1]
        keep = (seqs > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        positions = self.position_ids(seqs)
        x = self.item_emb(seqs) * math.sqrt(self.hidden) + self.pos_emb(positions)
        x = self.emb_drop(x) * keep
        real = seqs > 0
        eye = torch.eye(t, dtype=torch.bool, device=seqs.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=seqs.device).tril()
        mask = (causal & (real[:, None, :] | eye)).unsqueeze(1)  # [B, 1, T(query), T(key)]
        for block in self.blocks:
            x = block(x, keep, mask)
        return self.final_norm(x)
