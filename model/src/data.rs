//! Instruction data: JSONL in alpaca, prompt/completion and OpenAI messages formats, tokenized with prompt tokens masked (-100).
