//! Training a LoRA adapter with the base frozen: causal-LM loss, AdamW, accumulation, clipping, schedules, checkpoints.
