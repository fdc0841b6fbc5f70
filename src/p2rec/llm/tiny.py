"""A tiny random causal LM folder (2-layer Llama + a small byte-level BPE tokenizer), built offline.

For tests and smoke runs of the LLM stages: it loads through the same path as any real checkpoint
(``AutoModelForCausalLM`` / ``AutoTokenizer`` from a folder) in well under a second.
"""
from __future__ import annotations

from pathlib import Path

import torch

from p2rec.io import atomic_dir

_CORPUS = [
    "A user interacted with these items, in order:",
    "The user's preferences:",
    "Below are the items a user bought. Describe the user's preference.",
    " ".join(f"item_{i}" for i in range(0, 200)),
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;'\n",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny_llm(folder: str | Path, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """Write a random ``LlamaForCausalLM`` (``layers`` layers) and its tokenizer to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


def build_encoder_folder(folder: str | Path) -> Path:
    """A tiny BERT *encoder* folder (not a causal LM): for the error path of the loader."""
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    with atomic_dir(folder) as tmp:
        BertModel(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(folder)
