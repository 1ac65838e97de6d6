"""Training data: patch source, background workers, digits source, synthetic EM volumes."""
