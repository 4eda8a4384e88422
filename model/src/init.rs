//! Random weights in the Hugging Face layout (`tributary model init`).
