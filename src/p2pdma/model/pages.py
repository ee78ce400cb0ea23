"""The optional upper layer: pages for P2P memory, a pool, publishing, finding the closest provider,
and the ``p2pmem/allocate`` mmap. Built only on the provider layer.

Mirrors pci_p2pdma_add_resource(), pci_alloc_p2pmem(), pci_free_p2pmem(),
pci_p2pmem_virt_to_bus(), pci_p2pmem_alloc_sgl(), pci_p2pmem_publish(), pci_p2pmem_find_many()
and p2pmem_alloc_mmap() of drivers/pci/p2pdma.c, with the pool of lib/genalloc.c (page
granularity, first fit, the newest chunk searched first).
"""

from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field

from p2pdma.errors import KernelError
from p2pdma.model.provider import (
    P2pdmaProvider,
    PciP2pdma,
    map_types_idx,
    p2pdma_of,
    pci_resource_is_mem,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)
from p2pdma.model.system import PAGE_SHIFT, PAGE_SIZE, System, devm_handler, fast_copy
from p2pdma.p2p import platform
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist

KVA_BASE = 0xFFFF_C900_0000_0000  # where the model's ZONE_DEVICE kernel addresses start
SZ_1T = 1 << 40


@dataclass(slots=True)
class Chunk:
    """One gen_pool chunk: kernel virtual range, the bus address it maps to, its pgmap."""

    virt: int
    phys: int
    size: int
    pgmap: int
    free_starts: list[int] = field(default_factory=list)  # free extents (page index), sorted
    free_len: dict[int, int] = field(default_factory=dict)  # start page -> pages


@dataclass(slots=True)
class Pool:
    """``struct gen_pool`` with min_alloc_order = PAGE_SHIFT."""

    chunks: list[Chunk] = field(default_factory=list)
    allocs: dict[int, tuple[int, int]] = field(default_factory=dict)  # virt -> (pages, pgmap)

    def size(self) -> int:
        """Mirrors gen_pool_size()."""
        return sum(c.size for c in self.chunks)

    def avail(self) -> int:
        """Mirrors gen_pool_avail()."""
        return sum(n for c in self.chunks for n in c.free_len.values()) << PAGE_SHIFT

    def add(self, virt: int, phys: int, size: int, pgmap: int) -> None:
        """Mirrors gen_pool_add_owner(): the new chunk goes first in the search order."""
        c = Chunk(virt, phys, size, pgmap, [0], {0: size >> PAGE_SHIFT})
        self.chunks.insert(0, c)

    def alloc(self, size: int) -> tuple[int, int] | None:
        """First fit in page units. Mirrors gen_pool_alloc_owner(); returns (virt, pgmap)."""
        if size <= 0:
            return None
        n = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        for c in self.chunks:
            for start in c.free_starts:
                length = c.free_len[start]
                if length >= n:
                    i = bisect.bisect_left(c.free_starts, start)
                    del c.free_starts[i]
                    del c.free_len[start]
                    if length > n:
                        c.free_starts.insert(i, start + n)
                        c.free_len[start + n] = length - n
                    virt = c.virt + (start << PAGE_SHIFT)
                    self.allocs[virt] = (n, c.pgmap)
                    return virt, c.pgmap
        return None

    def chunk_of(self, virt: int) -> Chunk | None:
        for c in self.chunks:
            if c.virt <= virt < c.virt + c.size:
                return c
        return None

    def free(self, virt: int, size: int) -> int:
        """Return pages to their chunk, merging neighbours. Mirrors gen_pool_free_owner(), whose
        BUG_ON for a range not allocated becomes a KernelError here. Returns the pgmap."""
        n = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        c = self.chunk_of(virt)
        if c is None or size <= 0:
            raise KernelError(f"freeing {virt:#x}+{size:#x}: not pool memory", errno.EFAULT)
        # the allocation may be freed page by page (p2pdma_folio_free), so track by page
        alloc_start: int | None = virt if virt in self.allocs else None
        if alloc_start is None:
            alloc_start = max((a for a in self.allocs if a <= virt), default=None)
        if alloc_start is None:
            raise KernelError(f"freeing {virt:#x}: not allocated", errno.EFAULT)
        pages, pgmap = self.allocs[alloc_start]
        a_end = alloc_start + (pages << PAGE_SHIFT)
        f_end = virt + (n << PAGE_SHIFT)
        if virt >= a_end:
            raise KernelError(f"freeing {virt:#x}: not allocated", errno.EFAULT)
        if f_end > a_end:
            raise KernelError(f"freeing {virt:#x}+{size:#x}: beyond the allocation", errno.EFAULT)
        del self.allocs[alloc_start]
        if virt > alloc_start:
            self.allocs[alloc_start] = ((virt - alloc_start) >> PAGE_SHIFT, pgmap)
        if f_end < a_end:
            self.allocs[f_end] = ((a_end - f_end) >> PAGE_SHIFT, pgmap)
        start = (virt - c.virt) >> PAGE_SHIFT
        i = bisect.bisect_left(c.free_starts, start)
        # merge with the previous and next free extents
        if i > 0:
            p = c.free_starts[i - 1]
            if p + c.free_len[p] == start:
                start, n = p, n + c.free_len.pop(p)
                del c.free_starts[i - 1]
                i -= 1
        if i < len(c.free_starts) and c.free_starts[i] == start + n:
            nxt = c.free_starts[i]
            n += c.free_len.pop(nxt)
            del c.free_starts[i]
        c.free_starts.insert(i, start)
        c.free_len[start] = n
        return pgmap

    def virt_to_phys(self, virt: int) -> int:
        """Mirrors gen_pool_virt_to_phys(): -1 when the address is not in the pool."""
        c = self.chunk_of(virt)
        return -1 if c is None else c.phys + (virt - c.virt)


@dataclass(slots=True)
class Pgmap:
    """A ``struct dev_pagemap`` for P2P memory: the range, its provider, and the live-page count
    (the percpu ref); ``dying`` once unbind began killing it."""

    id: int
    owner: str
    provider: P2pdmaProvider
    start: int
    size: int
    virt: int
    refs: int = 0
    dying: bool = False
    gone: bool = False


@dataclass(slots=True)
class UserMapping:
    """A userspace mmap of ``p2pmem/allocate``: pages inserted into a process."""

    id: int
    owner: str
    virt: int
    pages: int


@dataclass(slots=True)
class PagesState:
    """Everything the page layer keeps on the System."""

    pgmaps: dict[int, Pgmap] = field(default_factory=dict)
    mappings: dict[int, UserMapping] = field(default_factory=dict)
    next_kva: int = KVA_BASE
    alloc_attr_removed: set[str] = field(default_factory=set)


def _state(system: System) -> PagesState:
    st = system.ext.get("pages")
    if st is None:
        st = system.ext["pages"] = PagesState()
    assert isinstance(st, PagesState)
    return st


def _pool(p2p: PciP2pdma | None) -> Pool | None:
    if p2p is None or p2p.pool is None:
        return None
    assert isinstance(p2p.pool, Pool)
    return p2p.pool


SUBSECTION_SIZE = 2 << 20  # SUBSECTION_SHIFT 21 on x86-64


def pci_p2pdma_add_resource(system: System, bdf: str, bar: int, size: int = 0, offset: int = 0) -> None:
    """Give (part of) a memory BAR pages and put it in the device's pool. Mirrors
    pci_p2pdma_add_resource() (drivers/pci/p2pdma.c, 7.2): EINVAL for a non-memory BAR, a range
    outside it, or one devm_memremap_pages() refuses (not 2 MiB sub-section aligned)."""
    dev = system.device(bdf)
    if not 0 <= bar < 6 or not pci_resource_is_mem(dev, bar):
        raise KernelError(f"{bdf}: BAR{bar} is not a memory BAR", errno.EINVAL)
    b = next(x for x in dev.bars if x.index == bar)
    if offset < 0 or size < 0 or offset >= b.size:
        raise KernelError(f"{bdf}: offset {offset:#x} outside BAR{bar} ({b.size:#x})", errno.EINVAL)
    if not size:
        size = b.size - offset
    if size + offset > b.size:
        raise KernelError(f"{bdf}: {offset:#x}+{size:#x} exceeds BAR{bar} ({b.size:#x})", errno.EINVAL)
    if (b.start + offset) % SUBSECTION_SIZE or size % SUBSECTION_SIZE:
        # devm_memremap_pages() -> __add_pages(): check_pfn_span() (mm/memory_hotplug.c, 7.2) wants
        # the pfn range aligned to a memory sub-section (2 MiB), else EINVAL
        raise KernelError(f"{bdf}: {b.start + offset:#x}+{size:#x} is not aligned to a 2 MiB sub-section "
                          "(devm_memremap_pages())", errno.EINVAL)
    pcim_p2pdma_init(system, bdf)
    p2p = p2pdma_of(system, bdf)
    assert p2p is not None
    if p2p.pool is None:
        p2p.pool = Pool()
    prov = pcim_p2pdma_provider(system, bdf, bar)
    if prov is None:
        raise KernelError(f"{bdf}: no provider for BAR{bar}", errno.EINVAL)
    st = _state(system)
    pg = Pgmap(id=system.handle(), owner=bdf, provider=prov, start=b.start + offset, size=size, virt=st.next_kva)
    st.next_kva += (size + (1 << 30) - 1) // (1 << 30) * (1 << 30)
    st.pgmaps[pg.id] = pg
    system.devm_add_action(bdf, "memunmap_pages", pg.id)
    system.devm_add_action(bdf, "pci_p2pdma_unmap_mappings", pg.id)
    pool = _pool(p2p)
    assert pool is not None
    pool.add(pg.virt, b.bus_start + offset, size, pg.id)
    st.alloc_attr_removed.discard(bdf)
    system.log(f"pci_p2pdma_add_resource {bdf} BAR{bar} {offset:#x}+{size:#x}")


def pci_alloc_p2pmem(system: System, bdf: str, size: int) -> int | None:
    """Allocate P2P memory; the kernel virtual address, or None. Mirrors pci_alloc_p2pmem():
    no p2pdma, an empty pool, or a pgmap being torn down all give None."""
    pool = _pool(p2pdma_of(system, bdf))
    if pool is None:
        return None
    got = pool.alloc(size)
    if got is None:
        return None
    virt, pgid = got
    pg = _state(system).pgmaps[pgid]
    if pg.dying:
        pool.free(virt, size)
        return None
    pg.refs += (size + PAGE_SIZE - 1) >> PAGE_SHIFT
    system.log(f"pci_alloc_p2pmem {bdf} {size:#x} -> {virt:#x}")
    return virt


def _put_pages(system: System, bdf: str, pool: Pool, virt: int, size: int) -> None:
    pgid = pool.free(virt, size)
    pg = _state(system).pgmaps[pgid]
    pg.refs -= (size + PAGE_SIZE - 1) >> PAGE_SHIFT
    if pg.dying and pg.refs == 0:
        system.resume_unbind(bdf)


def pci_free_p2pmem(system: System, bdf: str, virt: int, size: int) -> None:
    """Give memory back to the pool. Mirrors pci_free_p2pmem(); freeing what was not allocated
    is reported (the kernel would BUG)."""
    p2p = p2pdma_of(system, bdf)
    pool = _pool(p2p)
    if pool is None:
        # the kernel dereferences a NULL p2pdma here
        system.violate("free-after-release", f"pci_free_p2pmem({bdf}, {virt:#x}) after the pool is gone")
        return
    try:
        _put_pages(system, bdf, pool, virt, size)
    except KernelError as exc:
        system.violate("bad-free", str(exc))
    system.log(f"pci_free_p2pmem {bdf} {virt:#x}")


def pci_p2pmem_virt_to_bus(system: System, bdf: str, virt: int) -> int:
    """The bus address of pool memory (0 for a NULL address or no p2pdma, -1 if not in the pool).
    Mirrors pci_p2pmem_virt_to_bus()."""
    if not virt:
        return 0
    pool = _pool(p2pdma_of(system, bdf))
    if pool is None:
        return 0
    return pool.virt_to_phys(virt)


def pci_p2pmem_alloc_sgl(system: System, bdf: str, length: int) -> list[tuple[int, int]] | None:
    """A one-entry scatterlist [(virt, length)] of P2P memory, or None. Mirrors
    pci_p2pmem_alloc_sgl()."""
    virt = pci_alloc_p2pmem(system, bdf, length)
    return None if virt is None else [(virt, length)]


def pci_p2pmem_free_sgl(system: System, bdf: str, sgl: list[tuple[int, int]]) -> None:
    """Mirrors pci_p2pmem_free_sgl()."""
    for virt, length in sgl:
        pci_free_p2pmem(system, bdf, virt, length)


def pci_p2pmem_publish(system: System, bdf: str, publish: bool) -> None:
    """Mirrors pci_p2pmem_publish(): a no-op without p2pdma."""
    p2p = p2pdma_of(system, bdf)
    if p2p is not None:
        p2p.p2pmem_published = publish


def pci_has_p2pmem(system: System, bdf: str) -> bool:
    """Mirrors pci_has_p2pmem()."""
    p2p = p2pdma_of(system, bdf)
    return p2p is not None and p2p.p2pmem_published


def sysfs_p2pmem(system: System, bdf: str) -> dict[str, str] | None:
    """The ``p2pmem/{size,available,published}`` attribute texts, None when the group is absent."""
    p2p = p2pdma_of(system, bdf)
    pool = _pool(p2p)
    if p2p is None or pool is None:
        return None
    return {
        "size": f"{pool.size()}\n",
        "available": f"{pool.avail()}\n",
        "published": f"{int(p2p.p2pmem_published)}\n",
    }


@dataclass(frozen=True, order=True, slots=True)
class Rank:
    """``struct pci_p2pdma_rank`` as a sort key: smaller is better."""

    type: int
    bandwidth_key: int
    latency_valid_key: int
    latency: int
    distance: int


RANK_DIRECT, RANK_HMAT_BANDWIDTH, RANK_HMAT_LATENCY, RANK_DISTANCE = range(4)


def pci_p2pdma_rank_many(system: System, provider: str, clients: list[str]) -> Rank | None:
    """How good ``provider`` is for all ``clients``; None when any cannot use it. Mirrors
    pci_p2pdma_rank_many(): the worst bandwidth and latency over host-bridge paths, summed
    distance."""
    if not clients:
        return None
    topo = system.topo
    bw = 2**32 - 1
    lat = 0
    bw_valid = lat_valid = True
    thru = False
    dist = 0
    for c in clients:
        if c not in topo:
            return None
        v = calc_map_type_and_dist(topo, provider, c, system.profile)
        p2p = p2pdma_of(system, provider)
        if p2p is not None:
            p2p.map_types[map_types_idx(topo[c])] = v.map_type
        if v.map_type == MapType.NOT_SUPPORTED:
            return None
        if v.map_type == MapType.THRU_HOST_BRIDGE:
            thru = True
            h = platform.hmat_path(topo, topo[provider], topo[c]) if system.profile == "latest" else None
            if h is None or not h.read_bandwidth or not h.write_bandwidth:
                bw_valid = False
            else:
                bw = min(bw, h.read_bandwidth, h.write_bandwidth)
            if h is None or not h.read_latency or not h.write_latency:
                lat_valid = False
            else:
                lat = max(lat, h.read_latency, h.write_latency)
        dist += v.distance
    if not thru:
        return Rank(RANK_DIRECT, 0, 0, 0, dist)
    if bw_valid:
        return Rank(RANK_HMAT_BANDWIDTH, -bw, 0 if lat_valid else 1, lat if lat_valid else 0, dist)
    if lat_valid:
        return Rank(RANK_HMAT_LATENCY, 0, 0, lat, dist)
    return Rank(RANK_DISTANCE, 0, 0, 0, dist)


def pci_p2pmem_find_many(system: System, clients: list[str]) -> str | None:
    """The published provider best for all clients, a random one among equals (the System's
    RNG). Mirrors pci_p2pmem_find_many()."""
    best: Rank | None = None
    best_devs: list[str] = []
    for d in system.topo.devices:
        if not pci_has_p2pmem(system, d.bdf):
            continue
        r = pci_p2pdma_rank_many(system, d.bdf, clients)
        if r is None:
            continue
        if best is None or r < best:
            best, best_devs = r, [d.bdf]
        elif r == best:
            best_devs.append(d.bdf)
    if not best_devs:
        return None
    return best_devs[system.rng.randrange(len(best_devs))]


def p2pmem_alloc_mmap(system: System, bdf: str, length: int, *, shared: bool = True, pgoff: int = 0) -> int:
    """mmap() of ``p2pmem/allocate``: returns a mapping id. Mirrors p2pmem_alloc_mmap():
    EINVAL for a private mapping or a non-zero offset, ENODEV without p2pdma (or once the
    attribute was removed), ENOMEM when the pool cannot satisfy it."""
    if not shared:
        raise KernelError(f"{bdf}: private mapping of p2pmem/allocate", errno.EINVAL)
    if pgoff:
        raise KernelError(f"{bdf}: mapping p2pmem/allocate at a non-zero offset", errno.EINVAL)
    if length <= 0 or length > SZ_1T:
        raise KernelError(f"{bdf}: mapping length {length:#x}", errno.EINVAL)
    p2p = p2pdma_of(system, bdf)
    pool = _pool(p2p)
    if pool is None or bdf in _state(system).alloc_attr_removed:
        raise KernelError(f"{bdf}: no p2pmem", errno.ENODEV)
    length = (length + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    got = pool.alloc(length)
    if got is None:
        raise KernelError(f"{bdf}: p2pmem pool cannot give {length:#x} bytes", errno.ENOMEM)
    virt, pgid = got
    pg = _state(system).pgmaps[pgid]
    if pg.dying:
        pool.free(virt, length)
        raise KernelError(f"{bdf}: p2pmem is going away", errno.ENODEV)
    pg.refs += length >> PAGE_SHIFT
    m = UserMapping(id=system.handle(), owner=bdf, virt=virt, pages=length >> PAGE_SHIFT)
    _state(system).mappings[m.id] = m
    system.log(f"mmap p2pmem/allocate {bdf} {length:#x} -> mapping {m.id}")
    return m.id


def p2pmem_munmap(system: System, mapping_id: int) -> None:
    """Unmap a user mapping: each page's last reference drops and it returns to the pool
    (p2pdma_folio_free())."""
    st = _state(system)
    m = st.mappings.pop(mapping_id, None)
    if m is None:
        raise KernelError(f"no p2pmem mapping {mapping_id}", errno.EINVAL)
    pool = _pool(p2pdma_of(system, m.owner))
    if pool is None:
        system.violate("free-after-release", f"mapping {mapping_id} outlived its pool")
        return
    for k in range(m.pages):
        _put_pages(system, m.owner, pool, m.virt + (k << PAGE_SHIFT), PAGE_SIZE)
    system.log(f"munmap p2pmem mapping {mapping_id}")


def live_pages(system: System, bdf: str) -> int:
    """Pages of the device's pool currently handed out (kernel allocations and user mappings)."""
    return sum(pg.refs for pg in _state(system).pgmaps.values() if pg.owner == bdf and not pg.gone)


def page_provider(system: System, phys: int) -> P2pdmaProvider | None:
    """``is_pci_p2pdma_page()`` + ``page_pgmap()->mem``: the provider of a physical address that
    lies in a live P2P pgmap, else None."""
    for pg in _state(system).pgmaps.values():
        if not pg.gone and pg.start <= phys < pg.start + pg.size:
            return pg.provider
    return None


@devm_handler("pci_p2pdma_unmap_mappings")
def _unmap_mappings(system: System, bdf: str, pgmap_id: int) -> bool:
    """Mirrors pci_p2pdma_unmap_mappings(): removing ``allocate`` tears down user mappings."""
    st = _state(system)
    st.alloc_attr_removed.add(bdf)
    for mid in [m.id for m in st.mappings.values() if m.owner == bdf]:
        p2pmem_munmap(system, mid)
    return True


@devm_handler("memunmap_pages")
def _memunmap_pages(system: System, bdf: str, pgmap_id: int) -> bool:
    """Mirrors memunmap_pages(): kill the ref, then wait until every page came back."""
    pg = _state(system).pgmaps[pgmap_id]
    pg.dying = True
    if pg.refs:
        system.log(f"memunmap_pages {bdf}: waiting for {pg.refs} page(s)")
        return False
    pg.gone = True
    return True


fast_copy(Chunk, Pool, Pgmap, UserMapping, PagesState)
