"""States per second and total time of the checker on ``dmabuf-revoke`` with 1, 2 and 3 importers,
with and without symmetry reduction, measured in the same run.

    .venv/bin/python benchmarks/bench_check.py [--importers 1 2 3] [--max-states 300000]
"""

from __future__ import annotations

import argparse

from p2pdma.check.explore import check
from p2pdma.check.models import BUNDLED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--importers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--max-states", type=int, default=300_000)
    args = ap.parse_args()
    print(f"{'importers':>9} {'symmetry':>9} {'verdict':>8} {'complete':>8} {'states':>9} {'seconds':>9} "
          f"{'states/s':>9} {'state ratio':>11}")
    for n in args.importers:
        spec = BUNDLED["dmabuf-revoke"].with_importers(n)
        rows = []
        for sym in (True, False):
            r = check(spec, symmetry=sym, max_states=args.max_states)
            rows.append(r)
        for r in rows:
            ratio = rows[1].states / rows[0].states if r.reductions else 1.0
            print(f"{n:>9} {'on' if r.reductions else 'off':>9} {r.verdict:>8} {str(r.complete):>8} "
                  f"{r.states:>9} {r.seconds:>9.1f} {r.states_per_second:>9.0f} {ratio:>10.2f}x", flush=True)


if __name__ == "__main__":
    main()
