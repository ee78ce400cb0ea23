"""IOVA map+unmap and pool alloc+free pairs per second, each against a deliberately naive
first-fit list baseline measured in the same run, on the same workload.

Workload: a steady state of LIVE outstanding allocations (random sizes); each step frees the oldest
and allocates a new one, as a NIC's receive ring or an NVMe queue does.

    .venv/bin/python benchmarks/bench_model.py [--live 1000] [--ops 20000]
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pdma.model import dma as D  # noqa: E402
from p2pdma.model import pages as G  # noqa: E402
from p2pdma.model.system import PAGE_SHIFT, PAGE_SIZE, System  # noqa: E402
from p2pdma.sources.spec import parse_spec  # noqa: E402


class NaiveIova:
    """First-fit from the bottom over a sorted list of allocated ranges: O(n) per allocation."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def alloc(self, pages: int, limit_pfn: int) -> int | None:
        size = 1 << (pages - 1).bit_length()
        cur = 1
        for s, n in self.ranges:
            cand = (cur + size - 1) // size * size
            if cand + size <= s:
                break
            cur = max(cur, s + n)
        cand = (cur + size - 1) // size * size
        if cand + size - 1 > limit_pfn:
            return None
        bisect.insort(self.ranges, (cand, size))
        return cand

    def free(self, start: int) -> int:
        for i, (s, n) in enumerate(self.ranges):
            if s == start:
                del self.ranges[i]
                return n
        raise KeyError(start)


class NaivePool:
    """First-fit over a list of live allocations, scanning the gaps between them every time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.allocs: list[tuple[int, int]] = []

    def alloc(self, size: int) -> int | None:
        n = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        cur = 0
        for s, ln in self.allocs:
            if cur + n <= s:
                break
            cur = s + ln
        if cur + n > self.size:
            return None
        bisect.insort(self.allocs, (cur, n))
        return cur

    def free(self, addr: int, size: int) -> None:
        for i, (s, _) in enumerate(self.allocs):
            if s == addr:
                del self.allocs[i]
                return
        raise KeyError(addr)


def steady(alloc: Callable[[int], int | None], free: Callable[[int, int], None], live: int, ops: int,
           seed: int) -> float:
    """Pairs per second of alloc+free with ``live`` allocations outstanding."""
    rng = random.Random(seed)
    sizes = [rng.choice((1, 1, 1, 2, 4, 8)) * PAGE_SIZE for _ in range(live + ops)]
    q: deque[tuple[int, int]] = deque()
    for k in range(live):
        a = alloc(sizes[k])
        assert a is not None
        q.append((a, sizes[k]))
    t0 = time.perf_counter()
    for k in range(live, live + ops):
        a0, s0 = q.popleft()
        free(a0, s0)
        a = alloc(sizes[k])
        assert a is not None
        q.append((a, sizes[k]))
    return ops / (time.perf_counter() - t0)


def bench_iova(live: int, ops: int) -> tuple[float, float, float, float]:
    limit = (1 << 48) >> PAGE_SHIFT
    ours = D.IovaAllocator()
    naive = NaiveIova()
    r_ours = steady(lambda n: ours.alloc(n >> PAGE_SHIFT, limit), lambda a, n: ours.free(a), live, ops, 1)
    r_naive = steady(lambda n: naive.alloc(n >> PAGE_SHIFT, limit), lambda a, n: naive.free(a), live, ops, 1)

    # the same through dma_map_phys()/dma_unmap_phys(), with each allocator in the domain
    from tests.model.conftest import NIC, model_spec

    topo = parse_spec(model_spec()).topology()

    def api_rate(use_naive: bool) -> float:
        s = System(topo)
        s.set_dma_mask(NIC, 48)
        dom = D.domain_of(s, NIC)
        assert dom is not None
        if use_naive:
            dom.iova = NaiveIova()  # type: ignore[assignment]
        phys = iter(range(0x1000_0000, 1 << 46, 16 * PAGE_SIZE))
        return steady(lambda n: D.dma_map_phys(s, NIC, next(phys), n),
                      lambda a, n: D.dma_unmap_phys(s, NIC, a, n), live, ops, 2)

    return r_ours, r_naive, api_rate(False), api_rate(True)


def bench_pool(live: int, ops: int) -> tuple[float, float, float]:
    size = 64 << 20
    naive = NaivePool(size)
    r_naive = steady(naive.alloc, naive.free, live, ops, 3)
    pool = G.Pool()
    pool.add(G.KVA_BASE, 0, size, 1)
    r_pool = steady(lambda n: (pool.alloc(n) or (None, 0))[0], lambda a, n: pool.free(a, n) and None, live, ops, 3)

    from tests.model.conftest import GPU, model_spec

    topo = parse_spec(model_spec()).topology()
    s = System(topo)
    s.bind(GPU, "drv")
    G.pci_p2pdma_add_resource(s, GPU, 1, size)
    r_api = steady(lambda n: G.pci_alloc_p2pmem(s, GPU, n), lambda a, n: G.pci_free_p2pmem(s, GPU, a, n),
                   live, ops, 3)
    return r_pool, r_naive, r_api


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--ops", type=int, default=20000)
    args = ap.parse_args()
    print(f"{'what':<40} {'live':>6} {'ours/s':>12} {'naive/s':>12} {'ratio':>7}")
    for live in args.live:
        io, inv, api, api_naive = bench_iova(live, args.ops)
        print(f"{'IOVA alloc+free (allocator)':<40} {live:>6} {io:>12,.0f} {inv:>12,.0f} {io / inv:>6.1f}x")
        print(f"{'dma_map_phys+dma_unmap_phys (API)':<40} {live:>6} {api:>12,.0f} {api_naive:>12,.0f} "
              f"{api / api_naive:>6.1f}x")
        po, pn, pa = bench_pool(live, args.ops)
        print(f"{'pool alloc+free (gen_pool model)':<40} {live:>6} {po:>12,.0f} {pn:>12,.0f} {po / pn:>6.1f}x")
        print(f"{'pci_alloc_p2pmem+pci_free_p2pmem (API)':<40} {live:>6} {pa:>12,.0f} {pn:>12,.0f} "
              f"{pa / pn:>6.1f}x")


if __name__ == "__main__":
    main()
