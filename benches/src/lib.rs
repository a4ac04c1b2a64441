//! Benchmarks and peer comparisons for the persistent-memory SDK.
