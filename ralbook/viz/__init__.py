"""Figures: the notebooks' plots, and teaching figures drawn from the actual settings (the model diagram,
the GMM windows, the demo generator, word maps)."""
