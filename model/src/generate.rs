//! Generation loop: KV-cache prefill and decode, stop strings, max tokens, streaming callback, batches of different lengths.
