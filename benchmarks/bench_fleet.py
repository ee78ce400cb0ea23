"""Machines per second of ``p2pdma fleet``: one process, the local process pool, a local Dask cluster.

Usage: python benchmarks/bench_fleet.py [--machines 1000] [--endpoints 64] [--workers N]
                                        [--serial-machines 200] [--distinct 8]

Generates ``--machines`` capture archives of ``--endpoints``-endpoint synthetic machines (``--distinct``
different ones copied under many names, every 50th an outlier), then times each engine as the CLI
runs it: wall time including pool / cluster start and stop, and the steady rate between the first
and the last finished machine. One process runs the first ``--serial-machines`` machines only (its
rate does not depend on the fleet size). The pool and Dask documents must be identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from p2pdma.fleet.engines import Task, run
from p2pdma.fleet.report import build_report, report_json
from p2pdma.fleet.synth import write_fleet


@dataclass
class Row:
    """One engine's figures."""

    engine: str
    workers: int
    machines: int
    wall_s: float
    steady_s: float

    @property
    def rate(self) -> float:
        return self.machines / self.wall_s

    @property
    def steady_rate(self) -> float:
        return (self.machines - 1) / self.steady_s if self.steady_s > 0 else float("nan")


def _time(engine: str, tasks: list[Task], workers: int) -> tuple[Row, dict[str, object]]:
    stamps: list[float] = []

    def progress(done: int, total: int, failed: int) -> None:
        if done:
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    rows = run(tasks, "latest", engine, workers=workers, progress=progress)
    wall = time.perf_counter() - t0
    steady = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    doc = report_json(build_report(rows, "latest"))
    return Row(engine, workers if engine != "serial" else 1, len(tasks), wall, steady), doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=64)
    ap.add_argument("--distinct", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--serial-machines", type=int, default=200)
    ap.add_argument("--engines", nargs="+", default=["serial", "pool", "dask"])
    args = ap.parse_args()

    dest = Path(tempfile.mkdtemp(prefix="p2pdma-bench-fleet-"))
    try:
        t0 = time.perf_counter()
        paths = write_fleet(dest, args.machines, endpoints=args.endpoints, distinct=args.distinct, outlier_every=50)
        gen = time.perf_counter() - t0
        tasks = [Task(p.name[: -len(".tar.gz")], str(p)) for p in paths]
        size = sum(p.stat().st_size for p in paths) // len(paths)
        print(f"fleet: {len(tasks)} captures of {args.endpoints}-endpoint machines ({args.distinct} distinct),"
              f" {size} bytes each, generated in {gen:.1f} s; {os.cpu_count()} CPUs", file=sys.stderr)
        results: list[Row] = []
        docs: dict[str, dict[str, object]] = {}
        for engine in args.engines:
            subset = tasks[: args.serial_machines] if engine == "serial" else tasks
            row, doc = _time(engine, subset, args.workers)
            results.append(row)
            docs[engine] = doc
            print(f"  {engine}: {row.machines} machines in {row.wall_s:.1f} s", file=sys.stderr)
        if "pool" in docs and "dask" in docs and docs["pool"] != docs["dask"]:
            print("MISMATCH: the pool and Dask documents differ", file=sys.stderr)
            return 1
        base = next((r.rate for r in results if r.engine == "serial"), None)
        print(f"{'engine':<8} {'workers':>7} {'machines':>8} {'wall s':>8} {'machines/s':>11} {'steady/s':>9}"
              f" {'vs serial':>9}")
        for r in results:
            ratio = f"{r.rate / base:.2f}x" if base else "-"
            print(f"{r.engine:<8} {r.workers:>7} {r.machines:>8} {r.wall_s:>8.1f} {r.rate:>11.2f}"
                  f" {r.steady_rate:>9.2f} {ratio:>9}")
        if "pool" in docs and "dask" in docs:
            print("pool and dask documents: identical")
        return 0
    finally:
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
