//! Next-token choice from logits: greedy, temperature, top-k, top-p, repetition penalty, seeded.
