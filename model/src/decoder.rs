//! The Llama/Qwen2 decoder: embeddings, RMSNorm, RoPE, GQA attention with a KV cache, SwiGLU MLP, lm_head.
