"""The DMA API on physical addresses, with an IOMMU: domains per group, an IOVA allocator, a page table.

Mirrors dma_map_phys() / dma_unmap_phys() (DMA_ATTR_MMIO for peer memory), the two-step IOVA API
of include/linux/dma-mapping.h (dma_iova_try_alloc/link/sync/unlink/free/destroy) and the IOVA
allocator of drivers/iommu/iova.c (top-down below the device's limit, a cached starting point and
per-size caches of freed ranges). Misuse is caught as CONFIG_DMA_API_DEBUG catches it.
"""

from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field
from enum import IntEnum

from p2pdma.errors import DmaApiMisuse, IommuFault, KernelError
from p2pdma.model.provider import P2pdmaMapState, P2pdmaProvider, pci_p2pdma_bus_addr_map, pci_p2pdma_state
from p2pdma.model.system import PAGE_SHIFT, PAGE_SIZE, System, fast_copy
from p2pdma.p2p.decide import MapType

DMA_ATTR_MMIO = 1 << 10
IOVA_RANGE_CACHE_MAX_SIZE = 6  # log2 of the largest cached size, in pages (iova.c)
IOVA_START_PFN = 1


class DmaDirection(IntEnum):
    """``enum dma_data_direction``."""

    def __deepcopy__(self, memo: object) -> DmaDirection:
        return self  # members are constants: copies share them

    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2
    NONE = 3


class IovaAllocator:
    """Top-down IOVA allocation below a limit. Mirrors alloc_iova_fast()/free_iova_fast():
    freed ranges of up to 32 pages stay reserved in a per-size cache (the rcache) and are handed
    out first; otherwise the search starts below the last allocation (the cached node) and walks
    down the reserved ranges to the first gap that fits, naturally aligned."""

    RCACHE_DEPTH = 256

    def __init__(self, start_pfn: int = IOVA_START_PFN) -> None:
        self.start_pfn = start_pfn
        self.starts: list[int] = []  # reserved ranges (live or cached), sorted by start pfn
        self.ends: dict[int, int] = {}  # start pfn -> last pfn
        self.live: dict[int, int] = {}  # start pfn -> size in pages
        self.rcache: dict[int, list[int]] = {}  # size -> cached start pfns
        self.cached_start: int | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IovaAllocator) and (self.ends, self.live, self.rcache) == (
            other.ends, other.live, other.rcache)

    def alloc(self, pages: int, limit_pfn: int) -> int | None:
        """A naturally aligned range of ``pages`` (rounded up to a power of two) ending at or
        below ``limit_pfn``; None when no gap fits."""
        size = 1 << (pages - 1).bit_length()
        cache = self.rcache.get(size)
        if cache:
            for k in range(len(cache) - 1, -1, -1):
                if cache[k] + size - 1 <= limit_pfn:
                    start = cache.pop(k)
                    self.live[start] = size
                    return start
        start_found = self._search(size, limit_pfn, self.cached_start)
        if start_found is None and self.cached_start is not None:
            start_found = self._search(size, limit_pfn, None)
        if start_found is None:
            return None
        bisect.insort(self.starts, start_found)
        self.ends[start_found] = start_found + size - 1
        self.live[start_found] = size
        self.cached_start = start_found
        return start_found

    def _search(self, size: int, limit_pfn: int, below: int | None) -> int | None:
        hi = limit_pfn if below is None else min(limit_pfn, below - 1)
        idx = bisect.bisect_right(self.starts, hi)
        while True:
            floor = self.ends[self.starts[idx - 1]] + 1 if idx > 0 else self.start_pfn
            cand = ((hi + 1 - size) // size) * size
            if cand >= floor and cand >= self.start_pfn:
                return cand
            if idx == 0:
                return None
            idx -= 1
            hi = self.starts[idx] - 1

    def reserve(self, lo: int, hi: int) -> None:
        """Take pfns lo..hi out of the allocator for good (never handed out, never freed). Mirrors
        reserve_iova() on an empty domain; ranges must not overlap what is already there."""
        if any(lo <= self.ends[st] and st <= hi for st in self.starts):
            return  # already covered (merged windows)
        bisect.insort(self.starts, lo)
        self.ends[lo] = hi

    def free(self, start: int) -> int:
        """Free a live range; returns its size in pages. Freeing what is not live is misuse."""
        size = self.live.pop(start, None)
        if size is None:
            raise DmaApiMisuse(f"freeing IOVA pfn {start:#x} that was not allocated")
        cache = self.rcache.setdefault(size, [])
        if size <= 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1) and len(cache) < self.RCACHE_DEPTH:
            cache.append(start)
            return size
        del self.ends[start]
        del self.starts[bisect.bisect_left(self.starts, start)]
        if self.cached_start is not None and start >= self.cached_start:
            self.cached_start = None
        return size


@dataclass(slots=True)
class IommuDomain:
    """One IOMMU domain (per IOMMU group): translated (``dma``) or ``identity`` (passthrough)."""

    group: int
    type: str
    iova: IovaAllocator = field(default_factory=IovaAllocator)
    ptes: dict[int, tuple[int, bool]] = field(default_factory=dict)  # iova pfn -> (phys pfn, mmio)


@dataclass(slots=True)
class Iommu:
    """All domains of a machine, by IOMMU group."""

    domains: dict[int, IommuDomain] = field(default_factory=dict)


@dataclass(slots=True)
class Mapping:
    """A live streaming mapping, as dma-debug records it."""

    dev: str
    dma_addr: int
    size: int
    phys: int
    direction: DmaDirection
    attrs: int
    iova_pfn: int | None


@dataclass(slots=True)
class DmaDebug:
    """Live mappings per (device, dma address), and recently unmapped ones for better errors."""

    live: dict[tuple[str, int], Mapping] = field(default_factory=dict)
    freed: dict[tuple[str, int], int] = field(default_factory=dict)


def _iommu(system: System) -> Iommu:
    if system.iommu is None:
        system.iommu = Iommu()
    assert isinstance(system.iommu, Iommu)
    return system.iommu


def _debug(system: System) -> DmaDebug:
    if system.dma_debug is None:
        system.dma_debug = DmaDebug()
    assert isinstance(system.dma_debug, DmaDebug)
    return system.dma_debug


def group_of(system: System, dev: str) -> int:
    """The device's IOMMU group (its own when sysfs gave none)."""
    d = system.device(dev)
    if d.iommu_group is not None:
        return d.iommu_group
    return -1 - system.topo.index[dev]


def domain_of(system: System, dev: str) -> IommuDomain | None:
    """The device's domain, or None with no IOMMU (direct mapping)."""
    if system.iommu_mode == "off":
        return None
    grp = group_of(system, dev)
    doms = _iommu(system).domains
    if grp not in doms:
        dom = doms[grp] = IommuDomain(group=grp, type="identity" if system.iommu_mode == "identity" else "dma")
        if dom.type == "dma":
            iova_reserve_pci_windows(system, dev, dom.iova)
    return doms[grp]


def host_bridge_windows(system: System, dev: str) -> list[tuple[int, int]]:
    """The memory windows of the device's host bridge, as bus address ranges (merged). The
    topology has no _CRS, so the windows are the span of every memory BAR behind that bridge."""
    hb = system.device(dev).host_bridge
    spans = sorted((b.bus_start, b.bus_start + b.size - 1) for d in system.topo.devices if d.host_bridge == hb
                   for b in d.bars if b.is_mem and b.size > 0)
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def iova_reserve_pci_windows(system: System, dev: str, iovad: IovaAllocator) -> None:
    """Mirrors iova_reserve_pci_windows() (drivers/iommu/dma-iommu.c, 7.2): a DMA domain never hands
    out IOVAs inside the host bridge's memory windows, which a peer's BAR could alias (a DMA to
    such an address would be routed peer-to-peer instead of to the IOMMU)."""
    for lo, hi in host_bridge_windows(system, dev):
        iovad.reserve(lo >> PAGE_SHIFT, hi >> PAGE_SHIFT)


def _translated(system: System, dev: str) -> IommuDomain | None:
    dom = domain_of(system, dev)
    return dom if dom is not None and dom.type == "dma" else None


def _check_args(system: System, dev: str, phys: int, size: int, direction: DmaDirection) -> None:
    system.device(dev)
    if not system.present(dev):
        raise KernelError(f"{dev} is gone", errno.ENODEV)
    if size <= 0:
        raise KernelError(f"DMA mapping of {size} bytes", errno.EINVAL)
    if phys < 0 or phys + size > 1 << 64:
        raise KernelError(f"physical range {phys:#x}+{size:#x} out of range", errno.EINVAL)
    if not isinstance(direction, DmaDirection) and direction not in (0, 1, 2, 3):
        raise KernelError(f"bad DMA direction {direction!r}", errno.EINVAL)
    if direction == DmaDirection.NONE:
        raise KernelError("DMA_NONE is not a direction to map with", errno.EINVAL)


def dma_map_phys(
    system: System, dev: str, phys: int, size: int, direction: DmaDirection = DmaDirection.BIDIRECTIONAL,
    attrs: int = 0,
) -> int:
    """Map ``size`` bytes at CPU physical ``phys`` for ``dev``; returns the DMA address.
    Mirrors dma_map_phys(): through the device's IOMMU domain when translated, else the physical
    address itself, which must fit the DMA mask: beyond it dma_direct_map_phys() (kernel/dma/direct.h,
    7.2) returns DMA_MAPPING_ERROR for MMIO (no bounce buffer), which callers see as ENOMEM
    (dma_mapping_error())."""
    _check_args(system, dev, phys, size, direction)
    mask = system.dma_mask(dev)
    dom = _translated(system, dev)
    dbg = _debug(system)
    if dom is None:
        if phys + size - 1 > mask:
            raise KernelError(
                f"{dev}: {phys:#x}+{size:#x} is beyond its DMA mask {mask:#x} (DMA_MAPPING_ERROR)", errno.ENOMEM
            )
        addr, iova_pfn = phys, None
    else:
        first = phys >> PAGE_SHIFT
        pages = ((phys + size - 1) >> PAGE_SHIFT) - first + 1
        iova_pfn = dom.iova.alloc(pages, mask >> PAGE_SHIFT)
        if iova_pfn is None:
            raise KernelError(f"{dev}: IOVA space below {mask:#x} exhausted", errno.ENOMEM)
        mmio = bool(attrs & DMA_ATTR_MMIO)
        for k in range(pages):
            dom.ptes[iova_pfn + k] = (first + k, mmio)
        addr = (iova_pfn << PAGE_SHIFT) | (phys & (PAGE_SIZE - 1))
    key = (dev, addr)
    if key in dbg.live:
        # the identity case can map the same range twice; keep both by refcount-like suffix
        raise DmaApiMisuse(f"{dev}: DMA address {addr:#x} is already mapped")
    dbg.live[key] = Mapping(dev, addr, size, phys, DmaDirection(direction), attrs, iova_pfn)
    dbg.freed.pop(key, None)
    system.log(f"dma_map_phys {dev} {phys:#x}+{size:#x} -> {addr:#x}")
    return addr


def dma_unmap_phys(
    system: System, dev: str, addr: int, size: int, direction: DmaDirection = DmaDirection.BIDIRECTIONAL,
    attrs: int = 0,
) -> None:
    """Undo dma_map_phys(). Mirrors dma_unmap_phys(); a DMA-API-debug check catches unmapping
    what was not mapped, a double unmap, a wrong size or direction."""
    system.device(dev)
    if direction not in (0, 1, 2, 3):
        raise KernelError(f"bad DMA direction {direction!r}", errno.EINVAL)
    dbg = _debug(system)
    key = (dev, addr)
    m = dbg.live.get(key)
    if m is None:
        if key in dbg.freed:
            raise DmaApiMisuse(f"{dev}: DMA address {addr:#x} unmapped twice")
        raise DmaApiMisuse(f"{dev}: unmapping DMA address {addr:#x} that was never mapped")
    if m.size != size:
        raise DmaApiMisuse(f"{dev}: unmapping {addr:#x} with size {size:#x}, mapped with {m.size:#x}")
    if m.direction != direction:
        raise DmaApiMisuse(f"{dev}: unmapping {addr:#x} as {DmaDirection(direction).name}, mapped as "
                           f"{m.direction.name}")
    del dbg.live[key]
    dbg.freed[key] = size
    if m.iova_pfn is not None:
        dom = _translated(system, dev)
        assert dom is not None
        pages = dom.iova.free(m.iova_pfn)
        first = m.phys >> PAGE_SHIFT
        used = ((m.phys + size - 1) >> PAGE_SHIFT) - first + 1
        for k in range(max(used, 0)):
            dom.ptes.pop(m.iova_pfn + k, None)
        del pages
    system.log(f"dma_unmap_phys {dev} {addr:#x}")


def translate(system: System, dev: str, dma_addr: int) -> tuple[int, bool]:
    """What the IOMMU does with a device access: (CPU physical address, is MMIO) or IommuFault."""
    if not 0 <= dma_addr < 1 << 64:
        raise KernelError(f"{dev}: DMA address {dma_addr:#x} out of range", errno.EINVAL)
    dom = _translated(system, dev)
    if dom is None:
        return dma_addr, False
    pte = dom.ptes.get(dma_addr >> PAGE_SHIFT)
    if pte is None:
        raise IommuFault(f"{dev}: IOMMU fault at {dma_addr:#x} (no translation)")
    return (pte[0] << PAGE_SHIFT) | (dma_addr & (PAGE_SIZE - 1)), pte[1]


@dataclass(slots=True)
class DmaIovaState:
    """``struct dma_iova_state``: an IOVA range reserved once, then linked piece by piece."""

    dev: str = ""
    addr: int = 0
    size: int = 0
    linked: dict[int, int] = field(default_factory=dict)  # offset -> size
    mmio: bool = False


def dma_use_iova(state: DmaIovaState) -> bool:
    """Mirrors dma_use_iova(): whether the state holds an IOVA range."""
    return state.size != 0


def dma_iova_try_alloc(system: System, dev: str, state: DmaIovaState, phys: int, size: int) -> bool:
    """Reserve IOVA space for ``size`` bytes starting at ``phys``'s page offset. Mirrors
    dma_iova_try_alloc(): False (use dma_map_phys) when the device is not behind a translating
    IOMMU."""
    _check_args(system, dev, phys, size, DmaDirection.BIDIRECTIONAL)
    if dma_use_iova(state):
        raise DmaApiMisuse(f"{dev}: dma_iova_try_alloc on a state that already holds {state.addr:#x}")
    dom = _translated(system, dev)
    if dom is None:
        return False
    off = phys & (PAGE_SIZE - 1)
    pages = (off + size + PAGE_SIZE - 1) >> PAGE_SHIFT
    pfn = dom.iova.alloc(pages, system.dma_mask(dev) >> PAGE_SHIFT)
    if pfn is None:
        return False
    state.dev, state.addr, state.size, state.linked = dev, (pfn << PAGE_SHIFT) | off, size, {}
    system.log(f"dma_iova_try_alloc {dev} {size:#x} -> {state.addr:#x}")
    return True


def dma_iova_link(
    system: System, dev: str, state: DmaIovaState, phys: int, offset: int, size: int,
    direction: DmaDirection = DmaDirection.BIDIRECTIONAL, attrs: int = 0,
) -> None:
    """Map ``size`` bytes of ``phys`` at ``offset`` inside the reserved range. Mirrors
    dma_iova_link(): EINVAL outside the range or misaligned, EADDRINUSE over a linked part (the
    generic IOMMU page table of 7.2, drivers/iommu/generic_pt/iommu_pt.h, refuses to map over a
    mapping)."""
    _check_args(system, dev, phys, size, direction)
    if not dma_use_iova(state) or state.dev != dev:
        raise DmaApiMisuse(f"{dev}: dma_iova_link without a reserved IOVA range")
    if offset < 0 or offset + size > state.size:
        raise KernelError(f"{dev}: link {offset:#x}+{size:#x} outside the {state.size:#x} range", errno.EINVAL)
    if (state.addr + offset) & (PAGE_SIZE - 1) != phys & (PAGE_SIZE - 1):
        raise KernelError(f"{dev}: phys {phys:#x} and IOVA offset {offset:#x} differ within a page",
                          errno.EINVAL)
    for o, s in state.linked.items():
        if offset < o + s and o < offset + size:
            raise KernelError(f"{dev}: {offset:#x}+{size:#x} overlaps a linked part", errno.EADDRINUSE)
    dom = _translated(system, dev)
    assert dom is not None
    first_iova = (state.addr + offset) >> PAGE_SHIFT
    first_phys = phys >> PAGE_SHIFT
    pages = ((phys + size - 1) >> PAGE_SHIFT) - first_phys + 1
    for k in range(pages):
        dom.ptes[first_iova + k] = (first_phys + k, bool(attrs & DMA_ATTR_MMIO))
    state.linked[offset] = size
    state.mmio = state.mmio or bool(attrs & DMA_ATTR_MMIO)


def dma_iova_sync(system: System, dev: str, state: DmaIovaState, offset: int, size: int) -> None:
    """Mirrors dma_iova_sync(): flush the IOTLB for a linked part (nothing to do in the model)."""
    if not dma_use_iova(state) or offset < 0 or offset + size > state.size:
        raise KernelError(f"{dev}: sync outside the reserved range", errno.EINVAL)


def dma_iova_unlink(
    system: System, dev: str, state: DmaIovaState, offset: int, size: int,
    direction: DmaDirection = DmaDirection.BIDIRECTIONAL, attrs: int = 0,
) -> None:
    """Remove the translation of a linked part. Mirrors dma_iova_unlink(); unlinking what was not
    linked (or with another size) is DMA API misuse."""
    if state.linked.get(offset) != size:
        raise DmaApiMisuse(f"{dev}: unlink {offset:#x}+{size:#x} that was not linked so")
    dom = _translated(system, dev)
    assert dom is not None
    first = (state.addr + offset) >> PAGE_SHIFT
    last = (state.addr + offset + size - 1) >> PAGE_SHIFT
    for pfn in range(first, last + 1):
        dom.ptes.pop(pfn, None)
    del state.linked[offset]


def dma_iova_free(system: System, dev: str, state: DmaIovaState) -> None:
    """Give the reserved range back. Mirrors dma_iova_free(); linked parts left behind would keep
    stale translations, so that is misuse here."""
    if not dma_use_iova(state):
        raise DmaApiMisuse(f"{dev}: dma_iova_free without a reserved range")
    if state.linked:
        raise DmaApiMisuse(f"{dev}: dma_iova_free with {len(state.linked)} part(s) still linked")
    dom = _translated(system, dev)
    assert dom is not None
    dom.iova.free(state.addr >> PAGE_SHIFT)
    state.addr = state.size = 0


def dma_iova_destroy(
    system: System, dev: str, state: DmaIovaState, mapped_len: int,
    direction: DmaDirection = DmaDirection.BIDIRECTIONAL, attrs: int = 0,
) -> None:
    """Unlink the first ``mapped_len`` bytes and free the range. Mirrors dma_iova_destroy()."""
    for off, sz in sorted(state.linked.items()):
        if off < mapped_len:
            dma_iova_unlink(system, dev, state, off, sz, direction, attrs)
    dma_iova_free(system, dev, state)


def dma_map_p2p(
    system: System, dev: str, provider: P2pdmaProvider, phys: int, size: int,
    direction: DmaDirection = DmaDirection.BIDIRECTIONAL,
) -> tuple[int, MapType]:
    """Map peer memory the way its users do (e.g. blk_dma_map_iter_start(), hmm_dma_map_pfn()):
    BUS_ADDR gives the bus address and no IOMMU entry, THRU_HOST_BRIDGE maps with DMA_ATTR_MMIO,
    NOT_SUPPORTED fails with EREMOTEIO."""
    state = P2pdmaMapState()
    kind = pci_p2pdma_state(system, state, dev, provider)
    if kind == MapType.BUS_ADDR:
        return pci_p2pdma_bus_addr_map(system, provider, phys), kind
    if kind == MapType.THRU_HOST_BRIDGE:
        return dma_map_phys(system, dev, phys, size, direction, DMA_ATTR_MMIO), kind
    raise KernelError(f"{dev} cannot reach {provider.owner} BAR{provider.bar} peer-to-peer", errno.EREMOTEIO)


fast_copy(IommuDomain, Iommu, Mapping, DmaDebug, DmaIovaState)
