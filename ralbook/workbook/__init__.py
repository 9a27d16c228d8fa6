"""Layer 11, the notebook layer: running notebooks, the demo job, the results file and curated figures."""
