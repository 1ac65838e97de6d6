"""``ekn data``: training-data utilities (``ekn data synth OUT_DIR`` writes synthetic EM volumes,
``ekn data tubes OUT_DIR`` synthetic tubes with skeletons for tracing)."""

from __future__ import annotations

import argparse

from ekn_core.commands import Command


class DataCommand(Command):
    """Training-data utilities: `ekn data synth OUT_DIR` writes synthetic neuron-like EM volumes.

    The volumes follow ELEKTRONN2's layout (raw_i.h5:raw, barrier_int16_i.h5:lab, ids_i.h5:ids,
    labels centred and smaller than the raw cubes), so the neuro3d examples can train on them.
    `ekn data tubes OUT_DIR` writes tubes in noise (tube_i.h5:raw) and their skeletons
    (tube_i.nml) for examples/tracing_agent.py and examples/tracing_agent_rnn.py.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
        synth = sub.add_parser("synth", help="write synthetic neuron-like EM volumes")
        synth.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the volumes into")
        synth.add_argument("--n-volumes", type=int, default=3, help="number of volumes (default 3)")
        synth.add_argument("--shape", type=int, nargs=3, default=(48, 160, 160), metavar=("Z", "Y", "X"),
                           help="raw volume shape (default 48 160 160)")
        synth.add_argument("--label-margin", type=int, nargs=3, default=(8, 24, 24), metavar=("Z", "Y", "X"),
                           help="raw voxels beyond the labels on each side (default 8 24 24)")
        synth.add_argument("--aniso", type=float, default=2.0, help="z spacing / lateral spacing (default 2)")
        synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        tubes = sub.add_parser("tubes", help="write synthetic tubes and their skeletons (NML) for tracing")
        tubes.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the volumes and skeletons into")
        tubes.add_argument("--n-volumes", type=int, default=4, help="number of volumes (default 4)")
        tubes.add_argument("--shape", type=int, nargs=3, default=(32, 48, 64), metavar=("Z", "Y", "X"),
                           help="volume shape (default 32 48 64)")
        tubes.add_argument("--radius", type=float, default=3.0, help="tube radius in voxels (default 3)")
        tubes.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_plugins.data.synth import write_dataset, write_tube_dataset

        if args.data_command == "tubes":
            for files in write_tube_dataset(args.out_dir, n_volumes=args.n_volumes, shape=args.shape,
                                            radius=args.radius, seed=args.seed):
                print(files["raw"], files["skeleton"])
            return 0
        if args.n_volumes < 1:
            from ekn_core.errors import ConfigError

            raise ConfigError(f"--n-volumes must be >= 1, got {args.n_volumes}")
        written = write_dataset(args.out_dir, n_volumes=args.n_volumes, shape=args.shape,
                                label_margin=args.label_margin, seed=args.seed, aniso_factor=args.aniso)
        for files in written:
            print("  ".join(files[k] for k in ("raw", "barrier", "ids")))
        return 0
