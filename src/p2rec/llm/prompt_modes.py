"""The prompt modes (``llm.prompt.mode``), without torch: the workflow reads them while it builds the DAG.

soft       one soft token per item (a projected stage-0 row); the default, no item text
soft+text  each soft token followed by the item's text, cut to ``llm.prompt.text_tokens`` tokens
text       the item's text only (``item_<id>`` for an item without text)
"""
from __future__ import annotations

PROMPT_MODES = ("soft", "soft+text", "text")
#: the modes that show item texts (their SFT and extraction read the dataset's items file)
TEXT_MODES = ("soft+text", "text")
#: tokens of an item's text a prompt shows where ``llm.prompt.text_tokens`` is unset
DEFAULT_TEXT_TOKENS = 32


def prompt_needs_items(mode: str) -> bool:
    """Whether prompts of this mode show item texts."""
    return mode in TEXT_MODES
