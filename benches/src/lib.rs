//! Courier benchmarks; see `benches/`.
