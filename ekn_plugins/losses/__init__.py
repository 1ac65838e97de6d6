"""Built-in losses, output nodes and metrics (``ekn.losses``)."""
