"""Fabric throughput: a 1 GiB peer-to-peer copy through fabric.dma() against a plain numpy copy of
the same size in the same run, a 1 GiB memset through sparse memory (time and memory), and DMA
requests per second for 4 KiB requests.

The copy: the NIC 0000:05:00.0 of the bundled gpu8-switches machine reads 1 GiB out of BAR1 of the
GPU 0000:03:00.0 below the same PCIe switch (BUS_ADDR, no IOMMU) in large requests; every byte is
really copied out of the BAR's backing store. Then it writes 1 GiB back the same way. The baseline
is ``numpy.ndarray.copy()`` of a 1 GiB array (and a copy into an already touched array). Small
requests: 4 KiB reads by the same NIC (BUS_ADDR) and by a NIC on the other socket, whose requests
go through the root complexes and its IOMMU domain (THRU_HOST_BRIDGE), against 4 KiB numpy slice
copies. At most about 2 GiB is held at once.

    .venv/bin/python benchmarks/bench_fabric.py [--gib 1] [--request-mib 16] [--small 100000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from p2pdma.examples import load  # noqa: E402
from p2pdma.model import dma as D  # noqa: E402
from p2pdma.model import fabric as F  # noqa: E402
from p2pdma.model.provider import pcim_p2pdma_init, pcim_p2pdma_provider  # noqa: E402
from p2pdma.model.system import System  # noqa: E402

GPU, NIC, FAR_NIC = "0000:03:00.0", "0000:05:00.0", "0000:85:00.0"
MIB = 1 << 20


def best(fn: Callable[[], object], repeat: int) -> float:
    """The best wall time of ``repeat`` runs (seconds)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> tuple[System, int]:
    """The machine with the GPU's BAR1 known to the fabric; returns (system, BAR1 bus address)."""
    topo = load("gpu8-switches")
    s = System(topo, seed=0)
    for bdf in (GPU, NIC, FAR_NIC):
        s.bind(bdf, "drv")
        s.set_dma_mask(bdf, 64)
    bar = next(b for b in topo[GPU].bars if b.index == 1)
    return s, bar.bus_start


def bench_fabric_copy(total: int, request: int, repeat: int) -> tuple[float, float]:
    """Seconds for the NIC to read ``total`` bytes out of the GPU's BAR1, and to write them."""
    s, bus = machine()
    piece = np.random.default_rng(1).integers(0, 256, size=64 * MIB, dtype=np.uint8)
    for off in range(0, total, len(piece)):  # fill the BAR without holding a second 1 GiB
        F.cpu_write(s, GPU, 1, off, piece[: min(len(piece), total - off)].tobytes())
    sink = np.empty(request, dtype=np.uint8)

    def read_all() -> None:
        for off in range(0, total, request):
            got = F.dma(s, NIC, bus + off, request, write=False, context="bench")
            sink[:8] = got[:8]

    def write_all() -> None:
        for off in range(0, total, request):
            F.dma(s, NIC, bus + off, request, write=True, data=piece[:request], context="bench")

    read_all()  # warm up (allocator, caches)
    t_read = best(read_all, repeat)
    t_write = best(write_all, repeat)
    got = F.dma(s, NIC, bus, 4096, write=False)
    assert bytes(got) == piece[:4096].tobytes(), "the fabric did not move the bytes"
    assert s.violations == [] and F.state(s).bytes_by_path["BUS_ADDR"] >= 2 * total
    return t_read, t_write


def bench_sparse_fill(total: int, request: int) -> tuple[float, int, int]:
    """A memset of ``total`` bytes of BAR1 (fabric.cpu_fill), then the NIC reads it all back in
    ``request``-byte pieces: (seconds, bytes the BAR's store holds, peak RSS growth in bytes)."""
    import resource

    s, bus = machine()
    gc.collect()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    t0 = time.perf_counter()
    F.cpu_fill(s, GPU, 1, 0, total, 0x5A)
    for off in range(0, total, request):
        got = F.dma(s, NIC, bus + off, request, write=False, context="bench")
        assert got[0] == 0x5A and got[-1] == 0x5A
    dt = time.perf_counter() - t0
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - rss0
    return dt, F.state(s).bars[(GPU, 1)].resident, max(rss, 0)


def bench_memcpy(total: int, repeat: int) -> tuple[float, float]:
    """Seconds for numpy to copy ``total`` bytes into a new array, and into a touched one."""
    src = np.random.default_rng(2).integers(0, 256, size=total, dtype=np.uint8)
    dst = src.copy()
    t_copy = best(lambda: src.copy(), repeat)
    t_copyto = best(lambda: np.copyto(dst, src), repeat)
    return t_copy, t_copyto


def bench_copy(total: int, request: int, repeat: int) -> dict[str, float]:
    t_read, t_write = bench_fabric_copy(total, request, repeat)
    gc.collect()  # the fabric's 1 GiB is gone before the baseline's 2 GiB arrive
    t_copy, t_copyto = bench_memcpy(total, repeat)
    gc.collect()
    return {"read": total / t_read, "write": total / t_write, "copy": total / t_copy, "copyto": total / t_copyto}


def bench_small(n: int, repeat: int) -> dict[str, float]:
    s, bus = machine()
    F.cpu_write(s, GPU, 1, 0, bytes(64 * MIB // 16))
    # THRU_HOST_BRIDGE: the far NIC maps 4 MiB of the BAR through its IOMMU domain (DMA_ATTR_MMIO)
    pcim_p2pdma_init(s, GPU)
    prov = pcim_p2pdma_provider(s, GPU, 1)
    assert prov is not None
    bar = next(b for b in s.topo[GPU].bars if b.index == 1)
    iova, kind = D.dma_map_p2p(s, FAR_NIC, prov, bar.start, 4 * MIB)
    assert kind.name == "THRU_HOST_BRIDGE"
    span = 4 * MIB // 4096
    offs = [(k * 7919 % span) * 4096 for k in range(n)]

    def small(dev: str, base: int) -> Callable[[], None]:
        def go() -> None:
            for off in offs:
                F.dma(s, dev, base + off, 4096, write=False)

        return go

    t_bus = best(small(NIC, bus), repeat)
    t_thru = best(small(FAR_NIC, iova), repeat)
    assert s.violations == []
    arr = np.zeros(4 * MIB, dtype=np.uint8)

    def plain() -> None:
        for off in offs:
            arr[off : off + 4096].copy()

    t_plain = best(plain, repeat)
    return {"bus": n / t_bus, "thru": n / t_thru, "plain": n / t_plain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the big copy in GiB (default 1)")
    ap.add_argument("--request-mib", type=int, default=16, help="request size of the big copy (default 16 MiB)")
    ap.add_argument("--small", type=int, default=100_000, help="number of 4 KiB requests (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    args = ap.parse_args()
    total = int(args.gib * (1 << 30)) // MIB * MIB
    request = args.request_mib * MIB
    t_fill, resident, rss = bench_sparse_fill(total, request)
    print(f"{total / (1 << 30):.2f} GiB memset of BAR1 then read back by the NIC (sparse memory):")
    print(f"  {t_fill:.2f} s, the BAR holds {resident / MIB:.0f} MiB, peak RSS grew {rss / MIB:.0f} MiB")
    c = bench_copy(total, request, args.repeat)
    gb = 1e9
    print(f"{total / (1 << 30):.2f} GiB peer-to-peer through fabric.dma in {args.request_mib} MiB requests:")
    print(f"  fabric read  (NIC <- GPU BAR1)   {c['read'] / gb:7.2f} GB/s")
    print(f"  fabric write (NIC -> GPU BAR1)   {c['write'] / gb:7.2f} GB/s")
    print(f"  numpy copy() of the same size    {c['copy'] / gb:7.2f} GB/s")
    print(f"  numpy copyto() into warm memory  {c['copyto'] / gb:7.2f} GB/s")
    print(f"  ratio read/copy {c['read'] / c['copy']:.2f}  write/copy {c['write'] / c['copy']:.2f}  "
          f"read/copyto {c['read'] / c['copyto']:.2f}  (goal: read/copy >= 0.5)")
    r = bench_small(args.small, args.repeat)
    print(f"{args.small} requests of 4 KiB:")
    print(f"  fabric BUS_ADDR          {r['bus']:>12,.0f} req/s")
    print(f"  fabric THRU_HOST_BRIDGE  {r['thru']:>12,.0f} req/s  (IOMMU translation)")
    print(f"  numpy 4 KiB slice copy   {r['plain']:>12,.0f} copies/s")
    print(f"  ratio BUS_ADDR/plain {r['bus'] / r['plain']:.3f}  THRU_HOST_BRIDGE/plain {r['thru'] / r['plain']:.3f}")


if __name__ == "__main__":
    main()
