"""``ekn daemon QUEUE_DIR``: start queued experiment configs when resources are free."""

from __future__ import annotations

import argparse

from ekn_core.commands import Command


class DaemonCommand(Command):
    """Start queued experiment configs from QUEUE_DIR when GPU, CPU and RAM are free (multi-host safe).

    Put configs into QUEUE_DIR (on a file system all hosts share) and run one daemon per host.
    Started configs move to running/, then done/ or failed/; status/NAME.json and logs/NAME.log
    record each experiment, logs/daemon-HOST-PID.log every decision of a daemon. The command
    line may use {config}, {name}, {gpu} and {host}; CUDA_VISIBLE_DEVICES is set to the chosen GPU.
    With `ekn train`, Python files that are helpers of configs (no create_model, no model_load_path)
    stay in the queue unstarted; configs load them by absolute path (they run from running/).
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("queue_dir", metavar="QUEUE_DIR", help="directory of queued experiment configs (must "
                            "exist, unless --create)")
        parser.add_argument("--create", action="store_true", help="create QUEUE_DIR if it does not exist")
        parser.add_argument("--command", dest="experiment_command", default="ekn train {config}",
                            help="command per experiment (default: 'ekn train {config}')")
        parser.add_argument("--poll", type=float, default=30.0, help="seconds between checks (default 30)")
        parser.add_argument("--start-wait", type=float, default=60.0,
                            help="seconds the start lock is kept after a start so its load shows (default 60)")
        parser.add_argument("--stale-after", type=float,
                            help="seconds after which a lock counts as stale (default start-wait + 600)")
        parser.add_argument("--max-running", type=int, help="experiments this daemon runs at once (default: #GPUs or 1)")
        parser.add_argument("--max-cpu-load", type=float, default=0.8, help="max 1-min load per core (default 0.8)")
        parser.add_argument("--min-free-ram-gb", type=float, default=2.0, help="min available RAM (default 2)")
        parser.add_argument("--min-gpu-mem-gb", type=float, default=2.0, help="min free memory of a GPU (default 2)")
        parser.add_argument("--max-gpu-util", type=float, default=20.0, help="max utilisation of a GPU in %% (default 20)")
        parser.add_argument("--require-gpu", action="store_true", help="never start on a host without GPUs")
        parser.add_argument("--cwd", help="working directory of the experiments (default: current)")
        parser.add_argument("--max-starts", type=int, help="exit after starting this many (and their end)")
        parser.add_argument("--exit-when-empty", action="store_true",
                            help="exit when the queue is empty and this daemon's experiments ended")

    def run(self, args: argparse.Namespace) -> int:
        import os
        import socket

        from ekn_core.log import add_file_log
        from ekn_plugins.utils.daemon import ExperimentDaemon
        from ekn_plugins.utils.resources import Requirements

        requirements = Requirements(max_cpu_load=args.max_cpu_load, min_free_ram_gb=args.min_free_ram_gb,
                                    min_gpu_mem_gb=args.min_gpu_mem_gb, max_gpu_util=args.max_gpu_util,
                                    require_gpu=args.require_gpu)
        daemon = ExperimentDaemon(args.queue_dir, command=args.experiment_command, requirements=requirements,
                                  poll=args.poll, start_wait=args.start_wait, stale_after=args.stale_after,
                                  max_running=args.max_running, cwd=args.cwd, create=args.create)
        logfile = os.path.join(daemon.queue_dir, "logs", f"daemon-{socket.gethostname()}-{os.getpid()}.log")
        handler = add_file_log(logfile)
        try:
            daemon.run(max_starts=args.max_starts, exit_when_empty=args.exit_when_empty)
        finally:
            import logging

            logging.getLogger("ekn").removeHandler(handler)
            handler.close()
        return 0
