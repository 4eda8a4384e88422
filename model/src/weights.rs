//! safetensors IO: single-file and sharded checkpoints, f32/f16/bf16, clear errors naming the tensor.
