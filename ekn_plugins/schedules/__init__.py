"""Built-in meta-parameter schedules (``ekn.schedules``): dec, updates, lindec, warmup, cosine."""
