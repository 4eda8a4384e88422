//! Device selection: the fastest CPU backend measured here by default, burn-wgpu behind the `wgpu` feature.
