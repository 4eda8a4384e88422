//! LoRA applied without merging (the base stays shared): per-module A/B tensors and scales.
