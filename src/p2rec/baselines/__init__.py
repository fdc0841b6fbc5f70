"""Baselines that produce an item table without LLM fine-tuning (docs/adding-a-baseline.md)."""
