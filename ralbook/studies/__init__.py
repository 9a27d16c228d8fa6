"""Studies: analyses of trained models, benchmarks that compare methods on the same outputs, and the
sentences that report them (no notebook or command-line code)."""
