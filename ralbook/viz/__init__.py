"""Layer 4, figures: plots (no other ralbook module imported), and later diagrams."""
