"""Start-up cost of the command line, as ratios in one run: `p2pdma --help`, `p2pdma examples` and
`p2pdma matrix` on the live machine against `python3 -c pass` and `lspci -tv` (issue 17's goal:
matrix within 3x of lspci -tv). Run: .venv/bin/python benchmarks/startup.py [--runs N]."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
P2PDMA = os.path.join(os.path.dirname(sys.executable), "p2pdma")


def _time(cmd: list[str], runs: int) -> float:
    """Median wall time of ``cmd`` in seconds (output discarded; one warm-up run first)."""
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    got = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        got.append(time.perf_counter() - t0)
    return statistics.median(got)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    cases = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "p2pdma --help": [P2PDMA, "--help"],
        "p2pdma examples": [P2PDMA, "examples"],
        "p2pdma matrix (live)": [P2PDMA, "matrix"],
        "p2pdma matrix --example gpu8-switches": [P2PDMA, "matrix", "--example", "gpu8-switches"],
    }
    if shutil.which("lspci"):
        cases["lspci -tv"] = ["lspci", "-tv"]
    res = {name: _time(cmd, args.runs) for name, cmd in cases.items()}
    base = res["python3 -c pass"]
    lspci = res.get("lspci -tv")
    print(f"{'command':42} {'median ms':>10} {'x python':>9} {'x lspci -tv':>12}")
    for name, t in res.items():
        vs_lspci = f"{t / lspci:12.1f}" if lspci else f"{'n/a':>12}"
        print(f"{name:42} {t * 1000:10.1f} {t / base:9.1f} {vs_lspci}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
