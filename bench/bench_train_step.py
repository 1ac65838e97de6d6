"""Training-step benchmark: ekn vs Keras 3 vs PyTorch on the same nets, side by side.

One invocation starts one worker process per framework variant (``ekn``, Keras 3
``train_on_batch``, the same Keras model stepped by a hand-written ``tf.function``, PyTorch) and
runs them in interleaved rounds (round r: every net on every worker, one after the other), so a
change of machine load hits all frameworks alike. Each worker builds a net on first use and
records its first-step time (trace + compile + first run) separately. Reported: median step time
per (net, framework), ratios against ekn, training GFLOP per step (see ``bench/common.py``) and
the share of the measured 4096² matmul rate ("peak").

Usage:
    python bench/bench_train_step.py                       # all nets, all frameworks
    python bench/bench_train_step.py --nets unet3d --rounds 3 --steps 2 --json out.json
    python bench/bench_train_step.py --profile --frameworks ekn keras_tf_function   # op families side by side
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FRAMEWORKS = tuple(common.BUILDERS)


def worker(framework: str) -> None:
    """Serves ``{"net": name, "steps": n}`` requests on stdin, answers with JSON lines on stdout.

    A request ``{"peak": true}`` measures the matmul peak instead.
    """
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    if framework == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    steps: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("peak"):
            reply: dict[str, Any] = {"peak_gflops": common.matmul_peak()}
        else:
            name = request["net"]
            reply = {}
            if name not in steps:
                t0 = time.perf_counter()
                steps[name] = common.BUILDERS[framework](common.NETS[name])
                reply["build_s"] = time.perf_counter() - t0
                reply["first_step_s"] = common.time_calls(steps[name], 1)[0]
            reply["times"] = common.time_calls(steps[name], request["steps"])
        out.write(json.dumps(reply) + "\n")
        out.flush()


class Worker:
    """A framework worker process (see :func:`worker`)."""

    def __init__(self, framework: str):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        self.framework = framework
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", framework],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.framework} died (exit code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run(nets: list[str], frameworks: list[str], rounds: int, steps: int) -> dict[str, Any]:
    """Runs the interleaved rounds and returns the results (see the module docstring)."""
    result: dict[str, Any] = {"machine": common.machine_info(), "rounds": rounds, "steps_per_round": steps,
                              "nets": {}, "load_before": common.load_average()}
    workers = {fw: Worker(fw) for fw in frameworks}
    try:
        tf_worker = next((w for fw, w in workers.items() if fw != "torch"), None)
        peak = tf_worker.ask({"peak": True})["peak_gflops"] if tf_worker else None
        result["peak_gflops"] = peak
        raw: dict[tuple[str, str], dict[str, Any]] = {}
        for r in range(rounds):
            for net in nets:
                for fw, w in workers.items():
                    t0 = time.perf_counter()
                    reply = w.ask({"net": net, "steps": steps})
                    # progress on stderr: a stalled or slow worker shows up before the final table
                    print(f"round {r + 1}/{rounds} {net} {fw}: {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                          flush=True)
                    entry = raw.setdefault((net, fw), {"times": []})
                    entry["times"] += reply["times"]
                    for key in ("build_s", "first_step_s"):
                        if key in reply:
                            entry[key] = reply[key]
                    time.sleep(0.2)  # let spinning thread pools of the previous worker go idle
    finally:
        for w in workers.values():
            w.close()
    result["load_after"] = common.load_average()
    for net in nets:
        spec = common.NETS[net]
        rows = {}
        for fw in frameworks:
            entry = raw[(net, fw)]
            stats = common.summary(entry["times"])
            rows[fw] = {**stats, "build_s": entry["build_s"], "first_step_s": entry["first_step_s"]}
            if peak:
                rows[fw]["pct_peak"] = 100 * spec.train_gflop() / stats["median"] / peak
        base = rows.get("ekn", {}).get("median")
        for fw in frameworks:
            rows[fw]["ekn_speedup"] = rows[fw]["median"] / base if base else None
        result["nets"][net] = {"input": spec.input, "output": spec.output_shape(), "train_gflop": spec.train_gflop(),
                               "frameworks": rows}
    return result


def report(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s result."""
    m = result["machine"]
    peak = result["peak_gflops"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    lines = [f"machine: {m['cpu']}, {m['cores']} cores{gpu}; TF {m['tensorflow']}, Keras {m['keras']}, torch {m['torch']}",
             f"load average before/after: {result['load_before']:.2f}/{result['load_after']:.2f}; "
             f"matmul peak: {peak:.0f} GFLOP/s" if peak else "matmul peak: not measured",
             f"{result['rounds']} rounds x {result['steps_per_round']} steps; times in ms", "",
             "| net | GFLOP/step | framework | median | min | first step | % of peak | ekn speed-up |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for net, data in result["nets"].items():
        for fw, r in data["frameworks"].items():
            pct = f"{r['pct_peak']:.0f}%" if "pct_peak" in r else "-"
            speedup = f"{r['ekn_speedup']:.2f}x" if r["ekn_speedup"] else "-"
            lines.append(f"| {net} {'x'.join(map(str, data['input']))} | {data['train_gflop']:.1f} | {fw} | "
                         f"{1e3 * r['median']:.1f} | {1e3 * r['min']:.1f} | {1e3 * r['first_step_s']:.0f} | {pct} | "
                         f"{speedup} |")
    return "\n".join(lines)


#: Op-type families of the profile, first match wins (oneDNN op names carry ``_MklNative``/``_Mkl``).
OP_FAMILIES = (
    ("conv weight gradient", ("BackpropFilter",)),
    ("conv input gradient", ("BackpropInput",)),
    ("conv forward", ("Conv2D", "Conv3D")),
    ("matmul (1×1×1 layers)", ("MatMul",)),
    ("pooling", ("MaxPool", "AvgPool")),
    ("bias/activation gradients", ("BiasAddGrad", "ReluGrad", "Sum")),
)


def op_family(op_type: str) -> str:
    """The family of an op type in :data:`OP_FAMILIES` (``'other'``: elementwise, optimiser, loss, copies)."""
    return next((name for name, keys in OP_FAMILIES if any(k in op_type for k in keys)), "other")


def profile(nets: list[str], frameworks: list[str]) -> str:
    """Markdown tables of where the training step's op time goes (``tf.profiler``), per op family, for
    each TensorFlow framework side by side (ekn and Keras run the same oneDNN kernels; PyTorch is skipped)."""
    frameworks = [f for f in frameworks if f != "torch"]
    lines = []
    for net in nets:
        per_framework, walls = {}, {}
        for framework in frameworks:
            step = common.BUILDERS[framework](common.NETS[net])
            step()
            step()
            walls[framework] = 1e3 * min(common.time_calls(step, 2))
            families: dict[str, float] = {}
            for name, ms, _calls in common.op_profile(step, steps=2):
                families[op_family(name)] = families.get(op_family(name), 0.0) + ms
            per_framework[framework] = families
        names = [n for n, _ in OP_FAMILIES] + ["other"]
        lines += ["", f"{net}: op time per step in ms, summed over threads (share of the framework's total)", "",
                  "| op family | " + " | ".join(frameworks) + " |", "|---|" + "---:|" * len(frameworks)]
        for name in names + ["total"]:
            cells = []
            for framework in frameworks:
                families = per_framework[framework]
                total = sum(families.values())
                ms = total if name == "total" else families.get(name, 0.0)
                cells.append(f"{ms:.1f} ({100 * ms / total:.0f}%)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| wall time of a step (min of 2) | " + " | ".join(f"{walls[f]:.0f}" for f in frameworks) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(common.NETS), choices=list(common.NETS))
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=list(FRAMEWORKS))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and net (default 3)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--profile", action="store_true",
                        help="instead: tf.profiler op-family breakdown of each TensorFlow framework's step")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.profile:
        print(profile(args.nets, args.frameworks))
        return 0
    result = run(args.nets, args.frameworks, args.rounds, args.steps)
    print(report(result))
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
