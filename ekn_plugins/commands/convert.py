"""``ekn convert``: an ELEKTRONN2 ``.mdl`` model file written as an ekn model file
(:mod:`ekn_core.legacy_mdl`).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> ConvertCommand().add_arguments(parser)
    >>> args = parser.parse_args(["old.mdl", "new.h5"])
    >>> args.old, args.new, args.overwrite
    ('old.mdl', 'new.h5', False)
"""

from __future__ import annotations

import argparse
import os

from ekn_core.commands import Command
from ekn_core.errors import ConfigError


class ConvertCommand(Command):
    """Convert an ELEKTRONN2 model file (.mdl pickle) into an ekn model file (HDF5).

    OLD is read without running code from it (only ELEKTRONN2's node descriptors, numpy arrays and
    plain containers are accepted); its nodes are mapped to ekn's, its weights translated to ekn's
    layouts (Theano's flipped convolution filters included), and NEW is written atomically. A node
    ekn cannot convert is named in the error. `nm.modelload` reads .mdl files too, converting them
    in memory each time.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("old", metavar="OLD", help="ELEKTRONN2 model file (.mdl, plain or gzip-compressed)")
        parser.add_argument("new", metavar="NEW", help="ekn model file to write (HDF5)")
        parser.add_argument("--overwrite", action="store_true", help="replace NEW if it exists")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_core.legacy_pickle import looks_like_legacy_model
        from ekn_core.node import model_manager
        from ekn_core.persistence import modelload

        if not os.path.isfile(args.old):
            raise ConfigError(f"OLD {args.old} is not a file")
        if not looks_like_legacy_model(args.old):
            raise ConfigError(f"{args.old} is not an ELEKTRONN2 model file (a pickle); ekn model files need no "
                              f"conversion")
        if os.path.exists(args.new) and not args.overwrite:
            raise ConfigError(f"{args.new} exists; add --overwrite to replace it")
        name = os.path.splitext(os.path.basename(args.new))[0]
        while name in model_manager.models:
            name += "_"
        model = modelload(args.old, name=name)
        try:
            model.save(args.new)
        finally:
            model_manager.remove(name)
        n_params = sum(node.param_count for node in model.nodes.values())
        print(f"converted {args.old} -> {args.new}: {len(model.nodes)} nodes, {n_params:,} trainable parameters")
        return 0
