"""Start-up cost of the command line, as ratios in one run: `p2pdma --help`, `p2pdma examples` and
`p2pdma matrix` on the live machine against `python3 -c pass` and `lspci -tv` (issue 17's goal:
matrix within 3x of lspci -tv), and the floor of this design: a bare interpreter importing only the
standard-library modules the command line needs (re, argparse, typing, enum, dataclasses, pathlib, struct).
Run: .venv/bin/python benchmarks/startup.py [--runs N]."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
P2PDMA = os.path.join(os.path.dirname(sys.executable), "p2pdma")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _env(cache: str) -> dict[str, str]:
    """The children's environment: bytecode cached (as an installed package has it) under ``cache``, so
    that PYTHONDONTWRITEBYTECODE (set on some machines) does not make every run compile the sources,
    and nothing is written beside the sources."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _time(cmd: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system of the child) of ``cmd`` in seconds (output
    discarded; one warm-up run first). CPU time is what another load on the shared cores blurs least."""
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
    wall, cpu = [], []
    for _ in range(runs):
        c0 = _cpu()
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
        wall.append(time.perf_counter() - t0)
        cpu.append(_cpu() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    cases = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        # the floor of this design: the standard-library modules the command line needs before any of its code
        "stdlib floor (re argparse typing enum dataclasses pathlib)": [
            sys.executable, "-c", "import re, argparse, typing, enum, dataclasses, pathlib, struct"],
        "p2pdma --help": [P2PDMA, "--help"],
        "p2pdma examples": [P2PDMA, "examples"],
        "p2pdma matrix (live)": [P2PDMA, "matrix"],
        "p2pdma matrix --example gpu8-switches": [P2PDMA, "matrix", "--example", "gpu8-switches"],
    }
    if shutil.which("lspci"):
        cases["lspci -tv"] = ["lspci", "-tv"]
    with tempfile.TemporaryDirectory(prefix="p2pdma-startup-pyc-") as cache:
        res = {name: _time(cmd, args.runs, _env(cache)) for name, cmd in cases.items()}
    base = res["python3 -c pass"]
    lspci = res.get("lspci -tv")
    print(f"{'command':58} {'wall ms':>8} {'x python':>9} {'x lspci':>8} {'CPU ms':>8} {'x python':>9} {'x lspci':>8}")
    for name, (t, c) in res.items():
        vs_w = f"{t / lspci[0]:8.1f}" if lspci else f"{'n/a':>8}"
        vs_c = f"{c / lspci[1]:8.1f}" if lspci and lspci[1] > 0 else f"{'n/a':>8}"
        print(f"{name:58} {t * 1000:8.1f} {t / base[0]:9.1f} {vs_w} {c * 1000:8.1f} {c / base[1]:9.1f} {vs_c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
