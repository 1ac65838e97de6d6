"""Built-in optimisers (``ekn.optimisers``): SGD, AdaGrad, AdaDelta, Adam and AdamW."""
