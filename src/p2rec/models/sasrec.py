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

from p2rec import P2RecError
from p2rec.models.losses import FastDropout
from p2rec.models.base import SequentialBackbone


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, ffn_size: int | None = None, norm: str = "pre",
                 activation: str = "gelu", keys: str = "normalized", attention_out_dropout: bool = True):
        super().__init__()
        ffn_size = ffn_size or hidden
        self.post = norm == "post"
        self.raw_keys = keys == "raw" and not self.post
        self.heads = heads
        self.norm_attn = nn.LayerNorm(hidden, eps=1e-8)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = FastDropout(dropout)
        self.attn_out_drop = self.drop if attention_out_dropout else nn.Identity()
        self.attn_dropout = dropout
        self.norm_ffn = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn_size), _ACTIVATIONS[activation](), FastDropout(dropout),
                                 nn.Linear(ffn_size, hidden))

    def _heads(self, z: torch.Tensor) -> torch.Tensor:
        b, t, d = z.shape
        # split + transpose (not a 5-d permute): its backward is a cheap concat, not a zero-fill
        return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def _project(self, x: torch.Tensor, q_in: torch.Tensor, last_only: bool = False):
        """Queries (every position, or the last only) from the normalised input ``q_in``; keys and values from
        ``q_in`` too, or with ``keys: raw`` from the block input ``x`` (the authors' code)."""
        d = x.shape[-1]
        if not (last_only or self.raw_keys):  # all three from one input: one fused product
            return tuple(self._heads(z) for z in self.qkv(q_in).split(d, -1))
        w, bias = self.qkv.weight, self.qkv.bias
        q = self._heads(F.linear(q_in[:, -1:] if last_only else q_in, w[:d], bias[:d]))
        k, v = (self._heads(z) for z in F.linear(x if self.raw_keys else q_in, w[d:], bias[d:]).split(d, -1))
        return q, k, v

    def _finish(self, q_in: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn.shape
        x = q_in + self.attn_out_drop(self.out(attn.transpose(1, 2).reshape(b, t, -1)))
        if self.post:  # x + sublayer(x), then the norm (BERT, RecBole)
            x = self.norm_attn(x)
            return self.norm_ffn(x + self.drop(self.ffn(x)))
        h = self.norm_ffn(x)
        return h + self.drop(self.ffn(h))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask=None``: no padding in the batch, plain causal attention (the fused kernel)."""
        q_in = x if self.post else self.norm_attn(x)
        q, k, v = self._project(x, q_in)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              dropout_p=self.attn_dropout if self.training else 0.0)
        out = self._finish(q_in, attn)
        return out if keep is None else out * keep  # keep = None: no padding to zero

    def forward_last(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Output at the last position only (scoring, prefix samples): keys and values for every position, one
        query; in training with the same attention dropout as :meth:`forward`."""
        q_in = x if self.post else self.norm_attn(x)
        q, k, v = self._project(x, q_in, last_only=True)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                              dropout_p=self.attn_dropout if self.training else 0.0)
        return self._finish(q_in[:, -1:], attn)


class SASRec(SequentialBackbone):
    defaults = {"num_layers": 2, "num_heads": 1, "dropout": 0.2}

    def __init__(self, num_items: int, hidden: int, max_len: int, num_layers: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, ffn_size: int | None = None, norm: str = "pre", positions: str = "from_end",
                 activation: str = "gelu", keys: str = "normalized", qkv_init: str = "normal",
                 attention_out_dropout: bool = True):
        """``ffn_size``: width of the position-wise feed-forward layer; None = ``hidden``, as in the SASRec
        paper (RecBole's SASRec uses 256 = 4 x 64). ``norm``: "pre", the SASRec paper's layout (item embeddings
        scaled by sqrt(hidden), each sublayer fed a normalised input, a final norm); "post", the BERT layout
        RecBole's SASRec uses (unscaled embeddings normalised once, each block's sum normalised, no final norm).
        ``positions``: "from_end", counted back from the last input item (the authors' code: left padding to
        a fixed length); "from_start", counted from the first (RecBole: right padding). Trained on every
        position at once, "from_end" gives the query item position 0 only at a sequence's last position,
        while evaluation always puts it there; "from_start" has no such train/test difference.
        ``activation``: the feed-forward layer's non-linearity, "gelu" (RecBole, BERT) or "relu" (the SASRec
        paper and the public ML-1M cross-entropy reference). ``keys`` (pre-norm only): "normalized", keys and
        values from the normalised block input like the query; "raw", from the block input itself, as the
        authors' code and the ML-1M reference compute them. ``qkv_init``: the query/key/value projection's
        initial weights, "normal" (std 0.02, as every linear layer of the suite and RecBole) or "xavier"
        (Glorot uniform, as PyTorch's attention module, which the ML-1M reference uses, initialises it; the
        authors' TensorFlow layers are Glorot uniform too). ``attention_out_dropout``: dropout on the attention
        block's output before the residual sum, as RecBole and the BERT layout apply it; false, as in the
        ML-1M reference (PyTorch's attention module drops attention weights only)."""
        if norm not in ("pre", "post"):
            raise P2RecError(f"config key 'backbone_params.sasrec.norm': 'pre' or 'post', got {norm!r}")
        if num_heads < 1 or hidden % num_heads:
            raise P2RecError(f"config key 'backbone_params.sasrec.num_heads': must divide train.hidden ({hidden}), "
                             f"got {num_heads}")
        if positions not in ("from_end", "from_start"):
            raise P2RecError(f"config key 'backbone_params.sasrec.positions': 'from_end' or 'from_start', "
                             f"got {positions!r}")
        if activation not in _ACTIVATIONS:
            raise P2RecError(f"config key 'backbone_params.sasrec.activation': one of {sorted(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        if not isinstance(attention_out_dropout, bool):
            raise P2RecError(f"config key 'backbone_params.sasrec.attention_out_dropout': true or false, "
                             f"got {attention_out_dropout!r}")
        if qkv_init not in ("normal", "xavier"):
            raise P2RecError(f"config key 'backbone_params.sasrec.qkv_init': 'normal' or 'xavier', got {qkv_init!r}")
        if keys not in ("normalized", "raw"):
            raise P2RecError(f"config key 'backbone_params.sasrec.keys': 'normalized' or 'raw', got {keys!r}")
        super().__init__(num_items, hidden, max_len)
        self.post = norm == "post"
        self._positions = self.position_ids_from_start if positions == "from_start" else self.position_ids
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_drop = FastDropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, num_heads, dropout, ffn_size, norm, activation, keys,
                                           attention_out_dropout) for _ in range(num_layers))
        # post: the norm sits on the embeddings instead of after the last block
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.apply(self._init_weights)
        if qkv_init == "xavier":  # over the joint (3d x d) matrix, as PyTorch's attention module does
            for block in self.blocks:
                nn.init.xavier_uniform_(block.qkv.weight)

    def _embed(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Embedded inputs, keep [B, T, 1], real [B, T] and the attention mask (keep and mask are None without
        padding)."""
        t = seqs.shape[1]
        real = seqs > 0
        pos = self.pos_emb(self._positions(seqs))
        if self.post:
            x = self.emb_drop(self.final_norm(self.item_emb(seqs) + pos))
        else:
            x = self.emb_drop(self.item_emb(seqs) * math.sqrt(self.hidden) + pos)
        if bool(real.all()):
            return x, None, real, None  # no padding: nothing to zero
        keep = real.unsqueeze(-1).to(x.dtype)
        x = x * keep
        eye = torch.eye(t, dtype=torch.bool, device=seqs.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=seqs.device).tril()
        mask = (causal & (real[:, None, :] | eye)).unsqueeze(1)  # [B, 1, T(query), T(key)]
        return x, keep, real, mask

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        x, keep, _, mask = self._embed(seqs[:, -self.max_len:])
        for block in self.blocks:
            x = block(x, keep, mask)
        return x if self.post else self.final_norm(x)

    def hidden_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """The last block computes only the last query (scoring and prefix samples need no other)."""
        x, keep, real, mask = self._embed(seqs[:, -self.max_len:])
        for block in self.blocks[:-1]:
            x = block(x, keep, mask)
        key_mask = None if mask is None else real[:, None, None, :]
        last = self.blocks[-1].forward_last(x, key_mask)
        return (last if self.post else self.final_norm(last))[:, 0]
