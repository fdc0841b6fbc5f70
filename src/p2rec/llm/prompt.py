"""The prompt: an instruction in plain text, the user's items, a response marker (METHOD.md 4, step 3).

Prompt modes (``llm.prompt.mode``, METHOD.md 4 step 3 and section 8):

``soft``       each item is one *soft token*: a trainable linear projection of its frozen stage-0 item-table
               row into the LLM's embedding space, spliced into ``inputs_embeds`` at the item slots (no
               vocabulary growth, no item text). The default.
``soft+text``  each soft token is followed by the item's text (`` <text>``, a leading space, tokenised like
               ordinary text and cut to its first ``llm.prompt.text_tokens`` tokens); an item without text is
               its soft token alone.
``text``       text only: an item with text is `` <text>`` cut to ``text_tokens`` tokens, then ``;`` (the
               boundary between items); an item without text (or every item, when no item texts are given)
               is written ``item_1234``, the form this mode had before item texts existed.

The item texts come from ``data/{dataset}/items.tsv`` (p2rec.data.items), a list indexed by item id.

Batches are right-padded to their longest prompt; the hidden state is read at each prompt's last real
position, so padding never changes a result.

Shared prefix: every prompt starts with the same instruction tokens, and causal attention makes their
states independent of what follows. With ``shared_prefix`` the model runs the instruction once per batch
(batch size 1), repeats its keys and values over the batch, and runs only the item and response tokens
against them. In training the repeated keys and values stay in the graph, so the adapters receive the
gradient through the prefix as before (summed over the batch, as the per-row copies would give). The one
difference: LoRA dropout on the prefix draws one mask per batch instead of one per row.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from p2rec import P2RecError
from p2rec.llm.prompt_modes import DEFAULT_TEXT_TOKENS, PROMPT_MODES, TEXT_MODES, prompt_needs_items  # noqa: F401

#: what follows an item's text in ``text`` mode (in ``soft+text`` the next soft token marks the boundary)
TEXT_SEPARATOR = ";"


@dataclass
class PromptBatch:
    token_ids: torch.Tensor  # [B, T] vocabulary ids (0 at soft slots and padding)
    item_ids: torch.Tensor  # [B, T] item id at soft slots, 0 elsewhere
    soft_mask: torch.Tensor  # [B, T] bool, True at soft slots
    attention_mask: torch.Tensor  # [B, T] 1 for real positions
    last_index: torch.Tensor  # [B] index of the last real position
    lengths: list[int]  # real tokens per prompt

    @property
    def tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def padded_tokens(self) -> int:
        return int(self.token_ids.numel())

    def to(self, device) -> "PromptBatch":
        return PromptBatch(self.token_ids.to(device), self.item_ids.to(device), self.soft_mask.to(device),
                           self.attention_mask.to(device), self.last_index.to(device), self.lengths)


class PromptTemplate:
    """Tokenises the fixed text once; builds batches of prompts for lists of item ids."""

    def __init__(self, tokenizer, instruction: str, response: str, mode: str = "soft",
                 item_texts: list[str] | None = None, text_tokens: int | None = None):
        if mode not in PROMPT_MODES:
            raise P2RecError(f"config key 'llm.prompt.mode': unknown mode '{mode}' ({', '.join(PROMPT_MODES)})")
        if mode == "soft+text" and item_texts is None:
            raise P2RecError("config key 'llm.prompt.mode': 'soft+text' shows item texts: the stage needs the "
                             "dataset's items file (--items data/<dataset>/items.tsv)")
        budget = DEFAULT_TEXT_TOKENS if text_tokens is None else int(text_tokens)
        if budget < 1:
            raise P2RecError(f"config key 'llm.prompt.text_tokens': must be >= 1, got {text_tokens}")
        self.mode = mode
        self.instruction = instruction
        self.response = response
        self.tokenizer = tokenizer
        self.item_texts = item_texts if mode in TEXT_MODES else None
        self.text_tokens = budget
        self.prefix = list(tokenizer(instruction, add_special_tokens=True)["input_ids"])
        self.suffix = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        if not self.suffix:
            raise P2RecError("config key 'llm.prompt.response': the response marker must not be empty")
        self._text_ids: dict[int, list[int]] = {}
        self._separator = (list(tokenizer(TEXT_SEPARATOR, add_special_tokens=False)["input_ids"])
                           if mode == "text" else [])

    @property
    def uses_soft(self) -> bool:
        """Whether the items enter as soft tokens (the stage-0 table and its projection are needed)."""
        return self.mode in ("soft", "soft+text")

    def describe(self) -> dict:
        out = {"mode": self.mode, "instruction": self.instruction, "response": self.response,
               "prefix_tokens": len(self.prefix), "suffix_tokens": len(self.suffix)}
        if self.mode in TEXT_MODES:
            out.update(text_tokens=self.text_tokens, item_texts=self.item_texts is not None)
        return out

    def _text_of(self, item: int) -> str:
        if self.item_texts is None:
            return ""
        if not 0 <= item < len(self.item_texts):
            raise P2RecError(f"item id {item} has no entry in the item texts (items 1..{len(self.item_texts) - 1}; "
                             f"an items file of another dataset?)")
        return self.item_texts[item]

    def item_text_ids(self, item: int) -> list[int]:
        """The vocabulary tokens an item adds after its soft token (``soft+text``) or alone (``text``):
        its text cut to ``text_tokens`` tokens; in ``text`` mode then the separator, or ``item_<id>`` for an
        item without text. Nothing in ``soft`` mode."""
        ids = self._text_ids.get(item)
        if ids is None:
            ids = []
            if self.mode in TEXT_MODES:
                text = self._text_of(item)
                if text:
                    ids = list(self.tokenizer(f" {text}", add_special_tokens=False)["input_ids"])[:self.text_tokens]
                    ids += self._separator
                elif self.mode == "text":
                    ids = list(self.tokenizer(f" item_{item}", add_special_tokens=False)["input_ids"])
            self._text_ids[item] = ids
        return ids

    def item_length(self, item: int) -> int:
        """Tokens one item takes in a prompt."""
        return int(self.uses_soft) + len(self.item_text_ids(int(item)))

    def length(self, items) -> int:
        """Tokens of the prompt for ``items`` (used for batching by length and for token counts)."""
        if self.mode == "soft":
            return len(self.prefix) + len(items) + len(self.suffix)
        return len(self.prefix) + sum(self.item_length(int(i)) for i in items) + len(self.suffix)

    def batch(self, item_lists) -> PromptBatch:
        rows_tok, rows_item = [], []
        for items in item_lists:
            items = [int(i) for i in items]
            if self.mode == "soft":
                tok = self.prefix + [0] * len(items) + self.suffix
                itm = [0] * len(self.prefix) + items + [0] * len(self.suffix)
            else:
                tok, itm = list(self.prefix), [0] * len(self.prefix)
                for i in items:
                    if self.uses_soft:  # the item's soft slot, then its text
                        tok.append(0)
                        itm.append(i)
                    text = self.item_text_ids(i)
                    tok += text
                    itm += [0] * len(text)
                tok += self.suffix
                itm += [0] * len(self.suffix)
            rows_tok.append(tok)
            rows_item.append(itm)
        lengths = [len(r) for r in rows_tok]
        width = max(lengths)
        token_ids = torch.zeros((len(rows_tok), width), dtype=torch.long)
        item_ids = torch.zeros_like(token_ids)
        attention = torch.zeros_like(token_ids)
        for b, (tok, itm) in enumerate(zip(rows_tok, rows_item)):
            token_ids[b, : len(tok)] = torch.as_tensor(tok)
            item_ids[b, : len(itm)] = torch.as_tensor(itm)
            attention[b, : len(tok)] = 1
        soft = item_ids > 0
        return PromptBatch(token_ids, item_ids, soft, attention, torch.as_tensor(lengths) - 1, lengths)


class SoftItemEncoder(nn.Module):
    """item id -> Linear(frozen stage-0 row): the item's soft token in the LLM embedding space."""

    def __init__(self, item_table: np.ndarray, llm_dim: int):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.asarray(item_table, dtype=np.float32)), persistent=False)
        self.proj = nn.Linear(self.table.shape[1], llm_dim)

    def match_scale(self, token_embeddings: torch.Tensor) -> None:
        """Scale the initial projection so soft tokens have the mean norm of the LLM's token embeddings."""
        with torch.no_grad():
            target = token_embeddings.float().norm(dim=-1).mean()
            current = self.proj(self.table[1:]).norm(dim=-1).mean()
            if current > 0:
                factor = (target / current).item()
                self.proj.weight.mul_(factor)
                self.proj.bias.mul_(factor)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[item_ids])


def cache_keyword(decoder) -> str | None:
    """The name under which this decoder takes past keys and values (transformers renamed it), or None
    when its forward takes none (such a model runs every prompt whole)."""
    params = inspect.signature(decoder.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


class PreferenceModel(nn.Module):
    """The causal LLM (with LoRA injected) reading a prompt, plus the soft-token projection and a head."""

    def __init__(self, llm, decoder, template: PromptTemplate, soft: SoftItemEncoder | None, k: int,
                 shared_prefix: bool = True):
        super().__init__()
        self.llm = llm  # the (peft-wrapped) causal LM; kept for saving the adapter
        self.decoder = decoder  # its transformer body: returns last hidden states, no vocabulary logits
        self.template = template
        self.soft = soft
        self.head = nn.Linear(llm.config.hidden_size, k)
        if template.uses_soft and soft is None:
            raise P2RecError(f"prompt mode '{template.mode}' needs the stage-0 item table (soft tokens)")
        self.cache_keyword = cache_keyword(decoder)
        self.shared_prefix = bool(shared_prefix) and self.cache_keyword is not None and len(template.prefix) > 0

    def computed_tokens(self, batch: PromptBatch) -> int:
        """Positions the decoder runs for this batch, padding included (the prefix once when shared)."""
        if not self.shared_prefix:
            return batch.padded_tokens
        width = batch.token_ids.shape[1]
        prefix = len(self.template.prefix)
        return prefix + batch.token_ids.shape[0] * (width - prefix)

    def embed(self, batch: PromptBatch) -> torch.Tensor:
        embedding = self.decoder.get_input_embeddings()
        embeds = embedding(batch.token_ids)
        if self.soft is not None and self.template.uses_soft:
            soft = self.soft(batch.item_ids).to(embeds.dtype)
            embeds = torch.where(batch.soft_mask.unsqueeze(-1), soft, embeds)
        return embeds

    def last_hidden(self, batch: PromptBatch) -> torch.Tensor:
        if self.shared_prefix:
            return self._last_hidden_shared_prefix(batch)
        out = self.decoder(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask, use_cache=False)
        hidden = out.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, batch.last_index].float()

    def _last_hidden_shared_prefix(self, batch: PromptBatch) -> torch.Tensor:
        from transformers.cache_utils import DynamicCache

        n_prefix = len(self.template.prefix)
        rows, width = batch.token_ids.shape
        embeds = self.embed(batch)
        cache = DynamicCache(config=self.decoder.config)
        # the instruction once; its keys and values (in the autograd graph when training) fill the cache
        self.decoder(inputs_embeds=embeds[:1, :n_prefix], use_cache=True, **{self.cache_keyword: cache})
        cache.batch_repeat_interleave(rows)
        positions = torch.arange(n_prefix, width, device=embeds.device).unsqueeze(0).expand(rows, -1)
        out = self.decoder(inputs_embeds=embeds[:, n_prefix:], attention_mask=batch.attention_mask,
                           position_ids=positions, use_cache=True, **{self.cache_keyword: cache})
        hidden = out.last_hidden_state
        index = torch.arange(rows, device=hidden.device)
        return hidden[index, batch.last_index - n_prefix].float()

    def forward(self, batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.last_hidden(batch)
        return h, self.head(h)

    def trainable_modules(self) -> dict[str, nn.Module]:
        out = {"head": self.head}
        if self.soft is not None:
            out["soft"] = self.soft
        return out
