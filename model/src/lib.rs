//! Pure ML on burn: Hugging Face config, safetensors and PEFT IO, tokenizer and chat
//! template, the Llama/Qwen2 decoder, LoRA, KV-cache generation and sampling, and the
//! training step. No networking, async or storage here.

pub mod attribution_bench;
pub mod bench;
pub mod config;
pub mod data;
pub mod decoder;
pub mod device;
pub mod error;
pub mod features;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod init;
pub mod kernels;
pub mod lora;
pub mod peft;
pub mod plot;
pub mod precision;
pub mod quant;
pub mod quant_double;
pub mod quant_train;
pub mod sampling;
pub mod source;
pub mod tokenizer;
pub mod train;
pub mod weights;
