"""Built-in ``ekn_get_reader`` hook: picks a reader from a path's suffix or directory layout.

It runs last (``trylast``), so a plugin's own answer for a path wins.

Example:
    >>> ekn_get_reader("raw_0.h5"), ekn_get_reader("pred.zarr"), ekn_get_reader("ds/kfix.k.toml")
    ('hdf5', 'zarr', 'knossos')
    >>> ekn_get_reader("em.n5")
    'n5'
    >>> ekn_get_reader("em.tif"), ekn_get_reader("sections/*.png"), ekn_get_reader("precomputed://gs://b/em")
    ('imagestack', 'imagestack', 'precomputed')
    >>> ekn_get_reader("notes.txt") is None
    True
"""

from __future__ import annotations

import os

from ekn_core import hookimpl
from ekn_plugins.readers.image_files import is_image
from ekn_plugins.readers.imagestack import has_glob
from ekn_plugins.readers.n5 import is_n5_container
from ekn_plugins.readers.precomputed import SCHEME as PRECOMPUTED, is_precomputed_dir

_SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".zarr": "zarr", ".n5": "n5"}
_KNOSSOS_CONFIGS = (".k.toml", "knossos.conf", ".pyk.conf")


@hookimpl(trylast=True)
def ekn_get_reader(path: str) -> str | None:
    """Returns the built-in reader (``hdf5``, ``zarr``, ``n5``, ``knossos``, ``imagestack``,
    ``precomputed``) for paths it understands."""
    if path.startswith(PRECOMPUTED):
        return "precomputed"
    lower = path.lower().rstrip("/")
    if lower.endswith((".tif", ".tiff")) or (has_glob(path) and is_image(lower)):
        return "imagestack"
    for suffix, name in _SUFFIXES.items():
        if lower.endswith(suffix):
            return name
    if lower.endswith(_KNOSSOS_CONFIGS):
        return "knossos"
    if os.path.isdir(path):
        names = os.listdir(path)
        if ".zarray" in names or ".zgroup" in names or "zarr.json" in names:
            return "zarr"
        if is_n5_container(path):
            return "n5"
        if any(n.endswith(_KNOSSOS_CONFIGS) for n in names) or any(n.startswith("mag") for n in names):
            return "knossos"
        if is_precomputed_dir(path):
            return "precomputed"
        if any(is_image(n) for n in names):
            return "imagestack"
    return None
