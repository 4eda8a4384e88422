//! `tokenizer.json` through the `tokenizers` crate, and the chat template rendered as transformers renders it.
