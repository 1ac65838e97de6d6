"""Built-in layers of ekn, registered under the ``ekn.layers`` entry-point group (see setup.py)."""
