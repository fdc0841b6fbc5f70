"""FMLP-Rec (Zhou et al., WWW 2022): all-MLP blocks whose token mixing is a learnable filter in the
frequency domain (FFT -> element-wise complex weight -> inverse FFT) instead of self-attention.

Each block: filter layer (dropout, residual, LayerNorm), then the point-wise feed-forward layer
(d -> 4d -> d, GELU, dropout, residual, LayerNorm); embeddings are item + position, LayerNorm, dropout.
Hidden dropout 0.5 and two blocks as in the paper's Beauty setting.

Causality. The paper multiplies the length-n spectrum by the weight and inverts it: a *circular*
convolution over the sequence, in which position t also sees later positions (and wraps around).
Trained on every position at once, as our trainer does, that would let each position read its own
target. Here the filter is constrained to be causal while keeping the frequency-domain
parametrisation: the complex weight lives on the grid of a length-2L transform (L = max_len), its
impulse response is cut to lags 0..L-1 (lags >= 0 only), and the filter is applied as a zero-padded
(linear, not circular) FFT convolution. Position t therefore mixes items s <= t only, with weight
k[t - s] per dimension: the same family as the paper's filters minus their non-causal half. Padding
positions are zeroed after every block, so left padding never reaches real positions.
"""
from __future__ import annotations

import torch
from torch import nn

from p2rec.models.losses import FastDropout
from p2rec.models.base import SequentialBackbone


class _FilterBlock(nn.Module):
    def __init__(self, hidden: int, max_len: int, dropout: float, init_std: float):
        super().__init__()
        self.max_len = max_len
        # spectrum of a length-2L impulse response, per hidden dimension (real and imaginary parts)
        self.complex_weight = nn.Parameter(torch.randn(max_len + 1, hidden, 2) * init_std)
        self.filter_drop = FastDropout(dropout)
        self.filter_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.ffn_drop = FastDropout(dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12)

    def impulse_response(self) -> torch.Tensor:
        """The causal kernel k[lag, dim], lag = 0..L-1."""
        spectrum = torch.view_as_complex(self.complex_weight)
        return torch.fft.irfft(spectrum, n=2 * self.max_len, dim=0)[: self.max_len]

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        n = 2 * t  # zero padding to 2T turns the circular product into a linear convolution
        kernel = torch.fft.rfft(self.impulse_response()[:t], n=n, dim=0)  # [n/2+1, d]
        mixed = torch.fft.irfft(torch.fft.rfft(x, n=n, dim=1) * kernel, n=n, dim=1)[:, :t]
        x = self.filter_norm(self.filter_drop(mixed) + x)
        x = self.ffn_norm(self.ffn_drop(self.ffn(x)) + x)
        return x * keep

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """Output at the last position only (inference): the causal filter there is one dot product per
        dimension over the lags, so neither the FFT nor the feed-forward layer runs for other positions."""
        t = x.shape[1]
        mixed = (x.flip(1) * self.impulse_response()[:t]).sum(1, keepdim=True)  # sum over lag of k[lag] x[t-1-lag]
        h = self.filter_norm(self.filter_drop(mixed) + x[:, -1:])
        return self.ffn_norm(self.ffn_drop(self.ffn(h)) + h)


class FMLPRec(SequentialBackbone):
    defaults = {"num_layers": 2, "dropout": 0.5}

    def __init__(self, num_items: int, hidden: int, max_len: int, num_layers: int = 2, dropout: float = 0.5):
        super().__init__(num_items, hidden, max_len)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.emb_drop = FastDropout(dropout)
        self.blocks = nn.ModuleList(_FilterBlock(hidden, max_len, dropout, self.init_std) for _ in range(num_layers))
        self.apply(self._init_weights)

    def _embed(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (seqs > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        positions = self.position_ids(seqs)
        return self.emb_drop(self.emb_norm(self.item_emb(seqs) + self.pos_emb(positions))) * keep, keep

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        x, keep = self._embed(seqs[:, -self.max_len:])
        for block in self.blocks:
            x = block(x, keep)
        return x

    def hidden_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """The last block computes the last position only."""
        x, keep = self._embed(seqs[:, -self.max_len:])
        for block in self.blocks[:-1]:
            x = block(x, keep)
        return self.blocks[-1].forward_last(x)[:, 0]
