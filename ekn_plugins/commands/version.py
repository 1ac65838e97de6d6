"""``ekn version``: versions of ekn and of the libraries it runs on (read from metadata, so
TensorFlow is not imported).

Example:
    >>> import argparse
    >>> VersionCommand().run(argparse.Namespace())  # doctest: +ELLIPSIS
    ekn ...
    python ...
    0
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata

from ekn_core.commands import Command


class VersionCommand(Command):
    """Print the versions of ekn, Python and the main libraries (without importing them)."""

    LIBRARIES = ("tensorflow", "numpy", "h5py", "zarr", "pluggy", "stevedore", "dask")

    def run(self, args: argparse.Namespace) -> int:
        import platform

        from ekn_core import __version__

        print(f"ekn {__version__}")
        print(f"python {platform.python_version()}")
        for lib in self.LIBRARIES:
            try:
                print(f"{lib} {metadata.version(lib)}")
            except metadata.PackageNotFoundError:
                print(f"{lib} (not installed)")
        return 0
