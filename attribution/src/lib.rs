//! Influence math over per-example gradient features (projection, TracIn/DataInf-style
//! scores), verbatim-span evidence, and aggregation to contributor shares with anti-gaming
//! rules. Knows nothing of model internals or storage.
