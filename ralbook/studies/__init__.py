"""Layer 10, studies: analyses of trained models and the sentences that report them (no notebook code)."""
