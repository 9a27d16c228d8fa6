"""Studies built on trained models: benchmarks that compare methods on the same outputs."""
