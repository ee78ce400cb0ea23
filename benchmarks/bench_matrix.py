"""Time compute_matrix() against calc_map_type_and_dist() on synthetic machines.

Usage: python benchmarks/bench_matrix.py [--sizes 1000 10000] [--profile latest] [--seed 0]

For each size the whole matrix is computed once. The per-pair function is first timed on a random
sample of pairs; when that rate predicts the full machine in under ``--full-limit`` seconds every
pair is computed (``measured``), else the sample's rate is extrapolated to all pairs
(``extrapolated``). Every pair computed one by one is checked against the matrix.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass

import numpy as np

from p2pdma.p2p.decide import KERNEL_PROFILES, calc_map_type_and_dist
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci.topology import Topology
from p2pdma.sources.synth import generate_machine


@dataclass
class Row:
    """One line of the result table."""

    endpoints: int
    functions: int
    pairs: int
    build_s: float
    matrix_s: float
    per_pair_s: float
    mode: str
    checked: int
    mismatches: int


def per_pair(
    topo: Topology, m: Matrix, profile: str, pairs: list[tuple[int, int]]
) -> tuple[float, int]:
    """Seconds spent in calc_map_type_and_dist() on ``pairs``, and how many disagree with ``m``."""
    bdfs = m.bdfs
    got: list[tuple[int, int, bool]] = []
    t0 = time.perf_counter()
    for i, j in pairs:
        v = calc_map_type_and_dist(topo, bdfs[i], bdfs[j], profile)
        got.append((v.map_type.value, v.distance, v.certain))
    elapsed = time.perf_counter() - t0
    idx = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    want = np.array([g[:2] for g in got], dtype=np.int64).reshape(-1, 2)
    cert = np.array([g[2] for g in got], dtype=bool)
    rows, cols = idx[:, 0], idx[:, 1]
    bad = (
        (m.map_type[rows, cols] != want[:, 0])
        | (m.distance[rows, cols] != want[:, 1])
        | (m.certain[rows, cols] != cert)
    )
    return elapsed, int(bad.sum())


def all_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(n)]


def bench(n: int, *, seed: int, profile: str, sample: int, full_limit: float) -> Row:
    t0 = time.perf_counter()
    topo = generate_machine(n, seed=seed).topology()
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = compute_matrix(topo, profile)
    matrix_s = time.perf_counter() - t0
    nf = len(m.bdfs)
    total = nf * nf

    rng = random.Random(seed)
    k = min(sample, total)
    picks = rng.sample(range(total), k)
    probe = [(p // nf, p % nf) for p in picks]
    probe_s, probe_bad = per_pair(topo, m, profile, probe)
    estimate = probe_s / k * total
    if k == total:
        per_pair_s, mode, checked, mismatches = probe_s, "measured", total, probe_bad
    elif estimate <= full_limit:
        print(f"  {nf} functions: per-pair estimate {estimate:.0f} s, running all {total:,} pairs",
              file=sys.stderr, flush=True)
        per_pair_s, bad = per_pair(topo, m, profile, all_pairs(nf))
        mode, checked, mismatches = "measured", total, bad
    else:
        per_pair_s = estimate
        mode, checked, mismatches = f"extrapolated from {k:,}", k, probe_bad
    return Row(n, nf, total, build_s, matrix_s, per_pair_s, mode, checked, mismatches)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", choices=KERNEL_PROFILES, default="latest")
    ap.add_argument("--sample", type=int, default=20_000, help="pairs timed one by one first")
    ap.add_argument("--full-limit", type=float, default=180.0,
                    help="run every pair when the estimate is under this many seconds")
    args = ap.parse_args(argv)

    rows = []
    for n in args.sizes:
        print(f"benchmarking {n} endpoints ...", file=sys.stderr, flush=True)
        rows.append(bench(n, seed=args.seed, profile=args.profile, sample=args.sample,
                          full_limit=args.full_limit))

    print(f"profile {args.profile}, seed {args.seed}")
    head = (f"{'endpoints':>9} {'pairs':>13} {'build s':>8} {'matrix s':>9} {'per-pair s':>11} "
            f"{'speedup':>9}  {'per-pair mode':<26} {'checked':>11} {'mismatches':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.endpoints:>9} {r.pairs:>13,} {r.build_s:>8.2f} {r.matrix_s:>9.2f} "
              f"{r.per_pair_s:>11.1f} {r.per_pair_s / r.matrix_s:>8.0f}x  {r.mode:<26} "
              f"{r.checked:>11,} {r.mismatches:>10}")
    return 1 if any(r.mismatches for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
