//! Hugging Face `config.json` and `generation_config.json`: both transformers 4.x and 5.x layouts.
