"""Layer 8, retrieval: metrics (the shared leaf), exhaustive evaluation, the two-stage index, moments, search."""
