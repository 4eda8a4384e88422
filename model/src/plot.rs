//! Loss-curve plots (SVG) for training runs.
