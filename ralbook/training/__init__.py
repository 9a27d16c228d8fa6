"""Layer 9, training: optimiser, reproducibility, splits, the run directory, data parallelism, the trainer."""
