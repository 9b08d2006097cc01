#!/usr/bin/env python
"""
What a training run cost, for the model zoo and the benchmarks (the package does not measure itself):

    python tools/run_summary.py RUN_DIR -- python train_net.py ... OUTPUT_DIR RUN_DIR

runs the command, then writes ``RUN_DIR/run_summary.json``: iterations and the median training step
(from detectron2's ``metrics.json``), the command's wall time, its peak memory (on a GPU the
``max_mem`` detectron2 logs, on the CPU the peak resident set size of its largest process), the
machine, torch and detectron2. Exits with the command's status; nothing is written when it fails.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dynamic_rcnn.tools.paired import cpu_model, machine_description  # noqa: E402

__all__ = ["cpu_model", "machine_description", "run_timed", "summarize", "main"]


def run_timed(command, **popen_kwargs):
    """Run ``command`` to its end: (exit status, wall seconds, peak resident memory in MiB of its largest process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, **popen_kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def _metrics(run_dir):
    rows = []
    path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def summarize(run_dir: str, wall_seconds: float, peak_rss_mb: float) -> dict:
    """``RUN_DIR/run_summary.json`` from the run's files and what :func:`run_timed` measured; returns it."""
    import detectron2
    import torch

    # Training rows only: the final evaluation writes a row of its own, at the iteration after the last.
    rows = [r for r in _metrics(run_dir) if isinstance(r.get("iteration"), int) and "total_loss" in r]
    times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
    log = os.path.join(run_dir, "log.txt")
    gpu_mem = None
    if os.path.isfile(log):
        with open(log, errors="replace") as f:
            found = re.findall(r"max_mem: (\d+)M", f.read())
        gpu_mem = float(found[-1]) if found else None
    summary = {
        "iterations": max(r["iteration"] for r in rows) + 1 if rows else None,
        "s_per_iter": round(statistics.median(times), 4) if times else None,
        "wall_seconds": round(wall_seconds, 1),
        "peak_memory_mb": round(gpu_mem if gpu_mem is not None else peak_rss_mb, 1),
        "peak_memory_kind": "max_mem of detectron2's log (GPU)" if gpu_mem is not None
        else "peak resident set size of the largest process",
        "machine": machine_description(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
    }
    with open(os.path.join(run_dir, "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python tools/run_summary.py RUN_DIR -- COMMAND ...", file=sys.stderr)
        return 2
    run_dir, command = argv[0], argv[2:]
    status, wall, rss = run_timed(command)
    if status != 0:
        return status
    print(json.dumps(summarize(run_dir, wall, rss), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
