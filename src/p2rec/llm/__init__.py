"""The LLM stages of P2Rec (METHOD.md section 4).

loading     load any Hugging Face causal LM (hub id or folder); the packaged offline default
categories  k-means latent categories on the stage-0 item table and the prior preference g_u
prompt      the prompt template: soft tokens, soft tokens + item text, or item text (prompt_modes)
sft         user-level (P2Rec) and instance-level fine-tuning with LoRA, resumable, timed
extract     every item alone through the fine-tuned LLM: hidden states and parsed categories
reduce      PCA to the backbone hidden size, rescaled to the backbone initialisation scale
settings    the resolved settings of each stage (only what the stage uses)
commands    the CLI stages

Stages meet through files; nothing here is imported by the backbone trainer.
"""
