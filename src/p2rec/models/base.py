"""The backbone interface: a sequence encoder with a tied item-embedding output.

Every backbone maps left-padded item ids [B, T] to one hidden state per position [B, T, d], causally
(position t sees items up to t). Scores are that state times the item table (tied output). To the
trainer, a method variant is only an initial item table (:meth:`load_item_table`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from p2rec import P2RecError


class SequentialBackbone(nn.Module):
    #: std of the item-table initialisation; external tables are rescaled to it
    init_std: float = 0.02

    def __init__(self, num_items: int, hidden: int, max_len: int):
        super().__init__()
        self.num_items = num_items
        self.hidden = hidden
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    @staticmethod
    def position_ids(seqs: torch.Tensor) -> torch.Tensor:
        """Positions counted back from the last item, so left padding never shifts them."""
        t = seqs.shape[1]
        return torch.arange(t - 1, -1, -1, device=seqs.device)

    @staticmethod
    def position_ids_from_start(seqs: torch.Tensor) -> torch.Tensor:
        """Positions counted from each row's first real item [B, T] (padding gets 0; it is zeroed anyway).
        Left padding never shifts them either, and under causal attention the state at t then equals that
        of the prefix ending at t fed on its own: training every position at once is prefix training."""
        return ((seqs > 0).cumsum(1) - 1).clamp_min(0)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight

    def hidden_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """The hidden state at the last position [B, d] (a real item in every caller's input). A backbone
        may shortcut it (compute only what that position needs); it must equal ``forward(seqs)[:, -1]``."""
        return self.forward(seqs)[:, -1, :]

    def score_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of every item after the last position: [B, num_items + 1]."""
        return self.hidden_last(seqs) @ self.item_table().T

    def load_item_table(self, table: np.ndarray, source: str = "item table") -> None:
        """Initialise the item table from an external [num_items + 1, hidden] array (row 0 = padding)."""
        expected = (self.num_items + 1, self.hidden)
        if table.ndim != 2 or tuple(table.shape) != expected:
            raise P2RecError(f"{source}: item-embedding shape {tuple(table.shape)}, expected {expected} "
                             f"(num_items + 1 rows with row 0 for padding, hidden columns)")
        if not np.isfinite(table).all():
            bad = int((~np.isfinite(table)).any(1).sum())
            raise P2RecError(f"{source}: {bad} row(s) contain NaN or infinite values")
        with torch.no_grad():
            self.item_emb.weight.copy_(torch.as_tensor(table, dtype=self.item_emb.weight.dtype))
            self.item_emb.weight[0].zero_()
