"""Built-in volume readers and writers (``ekn.readers``)."""
