"""Caser (Tang & Wang, WSDM 2018): horizontal and vertical convolutions over the embeddings of the last
``window`` (L) items.

The paper encodes one window per training sample. Here the window ending at *every* position is encoded
in one pass, so Caser fits the one-causal-pass trainer: the embedded sequence is left-padded with L - 1
zero rows (the padding item's embedding is zero), then

* horizontal filters of height h = 1..L (``n_h`` each, ReLU) are one 1-d convolution per height over the
  whole sequence, followed by a sliding max over the L - h + 1 outputs that lie inside each window
  (the paper's max-pooling over time, per window);
* the ``n_v`` vertical filters (L x 1) are weighted sums of the L rows of each window, per dimension.

Both are concatenated, dropout is applied, and a fully connected layer with ReLU gives the sequence
representation z (as in the paper). The paper's output layer scores [z; P_u] with a separate item matrix;
our interface is user-id free with a tied item table, so a linear layer maps z into the item-embedding
space instead (as RecBole does, minus the user embedding). Position t depends only on items t-L+1..t.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p2rec import P2RecError
from p2rec.models.losses import FastDropout
from p2rec.models.base import SequentialBackbone


class Caser(SequentialBackbone):
    defaults = {"window": 5, "n_v": 4, "n_h": 16, "dropout": 0.5}

    def __init__(self, num_items: int, hidden: int, max_len: int, window: int = 5, n_v: int = 4, n_h: int = 16,
                 dropout: float = 0.5):
        super().__init__(num_items, hidden, max_len)
        if window < 1 or n_v < 0 or n_h < 0 or n_v + n_h == 0:
            raise P2RecError(f"config key 'backbone_params.caser': need window >= 1 and n_v + n_h >= 1 "
                             f"(got window={window}, n_v={n_v}, n_h={n_h})")
        self.window, self.n_v, self.n_h = window, n_v, n_h
        self.horizontal = nn.ModuleList(nn.Conv1d(hidden, n_h, kernel_size=h) for h in range(1, window + 1)) \
            if n_h else nn.ModuleList()
        self.vertical = nn.Linear(window, n_v) if n_v else None  # one weight per (filter, row of the window)
        self.drop = FastDropout(dropout)
        self.fc1 = nn.Linear(n_v * hidden + n_h * window, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.apply(self._init_weights)  # the item table at the suite's common scale (init_std)
        # fully connected layers with Xavier weights (as RecBole's Caser): from std 0.02 the model sits at the
        # popularity solution for hundreds of steps; the convolutions keep PyTorch's default, as in the paper's code
        for layer in (self.fc1, self.fc2, self.vertical):
            if layer is not None:
                nn.init.xavier_normal_(layer.weight)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        seqs = seqs[:, -self.max_len:]
        b, t = seqs.shape
        length = self.window
        emb = F.pad(self.item_emb(seqs), (0, 0, length - 1, 0))  # [B, T+L-1, d]: windows at the start see padding
        parts = []
        if self.vertical is not None:
            windows = emb.unfold(1, length, 1)  # [B, T, d, L]: window ending at each position, oldest row first
            parts.append(self.vertical(windows).transpose(2, 3).reshape(b, t, self.n_v * self.hidden))
        if self.n_h:
            channels = emb.transpose(1, 2)  # [B, d, T+L-1]
            for h, conv in enumerate(self.horizontal, start=1):
                c = F.relu(conv(channels))  # [B, n_h, T+L-h]: one value per h-row sub-window
                pooled = F.max_pool1d(c, kernel_size=length - h + 1, stride=1)  # [B, n_h, T]
                parts.append(pooled.transpose(1, 2))
        z = F.relu(self.fc1(self.drop(torch.cat(parts, -1))))
        return self.fc2(z)

    def hidden_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """The last position reads only the last ``window`` items: encode just that window."""
        return super().hidden_last(seqs[:, -self.window:])
