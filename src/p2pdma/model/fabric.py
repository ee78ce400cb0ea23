"""The fabric: memory that holds real bytes, DMA requests routed by the topology, per-link counters,
and a sanitizer that flags any access to memory the requester may no longer touch.

A request from a device for a DMA address is routed the way the hardware routes it: an address in
a peer BAR's bus range below a common switch with no redirecting ACS goes straight across
(BUS_ADDR, no IOMMU); anything else goes up to the root complex, where the requester's IOMMU domain
translates it (or faults) and the host bridge delivers it to RAM or to a BAR by CPU address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from p2pdma.errors import IommuFault, KernelError
from p2pdma.model import dma as D
from p2pdma.model.system import System
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.pci.topology import Bar

CHUNK = 1 << 21  # memory is allocated lazily in 2 MiB chunks
Bytes = npt.NDArray[np.uint8]


@dataclass(slots=True)
class Memory:
    """A sparse byte store: chunks appear on first write; unwritten bytes read as zero."""

    chunks: dict[int, Bytes] = field(default_factory=dict)

    def _chunk(self, idx: int) -> Bytes:
        c = self.chunks.get(idx)
        if c is None:
            c = self.chunks[idx] = np.zeros(CHUNK, dtype=np.uint8)
        return c

    def write(self, off: int, data: Bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            idx, inner = divmod(off + pos, CHUNK)
            take = min(CHUNK - inner, n - pos)
            self._chunk(idx)[inner : inner + take] = data[pos : pos + take]
            pos += take

    def read(self, off: int, n: int) -> Bytes:
        out = np.zeros(n, dtype=np.uint8)
        pos = 0
        while pos < n:
            idx, inner = divmod(off + pos, CHUNK)
            take = min(CHUNK - inner, n - pos)
            c = self.chunks.get(idx)
            if c is not None:
                out[pos : pos + take] = c[inner : inner + take]
            pos += take
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Memory) or self.chunks.keys() != other.chunks.keys():
            return False
        return all(np.array_equal(v, other.chunks[k]) for k, v in self.chunks.items())


@dataclass(slots=True)
class Target:
    """Where an access lands: a BAR (owner, index, offset) or host RAM (owner None)."""

    owner: str | None
    bar: int
    offset: int
    phys: int
    path: str  # BUS_ADDR, THRU_HOST_BRIDGE, HOST_MEMORY


@dataclass(slots=True)
class FabricState:
    """Bytes of every BAR and of host RAM, counters, sanitizer findings, IOMMU faults."""

    bars: dict[tuple[str, int], Memory] = field(default_factory=dict)
    ram: Memory = field(default_factory=Memory)
    bytes_by_path: dict[str, int] = field(default_factory=lambda: {"BUS_ADDR": 0, "THRU_HOST_BRIDGE": 0,
                                                                  "HOST_MEMORY": 0})
    requests_by_path: dict[str, int] = field(default_factory=lambda: {"BUS_ADDR": 0, "THRU_HOST_BRIDGE": 0,
                                                                     "HOST_MEMORY": 0})
    link_bytes: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    route_cache: dict[tuple[str, str], MapType] = field(default_factory=dict)


def state(system: System) -> FabricState:
    st = system.ext.get("fabric")
    if st is None:
        st = system.ext["fabric"] = FabricState()
    assert isinstance(st, FabricState)
    return st


def _bar_by_bus(system: System, addr: int) -> tuple[str, Bar] | None:
    for d in system.topo.devices:
        for b in d.bars:
            if b.is_mem and b.bus_start <= addr < b.bus_start + b.size:
                return d.bdf, b
    return None


def _bar_by_phys(system: System, phys: int) -> tuple[str, Bar] | None:
    for d in system.topo.devices:
        for b in d.bars:
            if b.is_mem and b.start <= phys <= b.end:
                return d.bdf, b
    return None


def _map_type(system: System, provider: str, client: str) -> MapType:
    st = state(system)
    key = (provider, client)
    m = st.route_cache.get(key)
    if m is None:
        m = st.route_cache[key] = calc_map_type_and_dist(system.topo, provider, client, system.profile).map_type
    return m


def route(system: System, dev: str, dma_addr: int, length: int) -> Target:
    """Where a request from ``dev`` for ``dma_addr`` goes (IommuFault when the IOMMU has no
    translation, KernelError EIO for an address nothing decodes)."""
    hit = _bar_by_bus(system, dma_addr)
    if hit is not None and hit[0] != dev and _map_type(system, hit[0], dev) == MapType.BUS_ADDR:
        owner, bar = hit
        return Target(owner, bar.index, dma_addr - bar.bus_start, bar.start + dma_addr - bar.bus_start, "BUS_ADDR")
    if hit is not None and hit[0] == dev:
        owner, bar = hit
        return Target(owner, bar.index, dma_addr - bar.bus_start, bar.start + dma_addr - bar.bus_start, "BUS_ADDR")
    phys, _mmio = D.translate(system, dev, dma_addr)
    last, _ = D.translate(system, dev, dma_addr + length - 1)
    if last - phys != length - 1:
        # the range spans IOVA pages that map discontiguously: split by the caller
        raise KernelError(f"{dev}: access {dma_addr:#x}+{length:#x} spans discontiguous pages", 22)
    hit = _bar_by_phys(system, phys)
    if hit is None:
        return Target(None, -1, phys, phys, "HOST_MEMORY")
    owner, bar = hit
    return Target(owner, bar.index, phys - bar.start, phys, "THRU_HOST_BRIDGE")


def _links(system: System, dev: str, target: Target) -> list[str]:
    """The links a request crosses, named child->parent, for the per-link counters."""
    chain = [d.bdf for d in system.topo.chain(dev)]
    if target.owner is None:
        return [f"{a}->{b}" for a, b in zip(chain, chain[1:], strict=False)] + [f"{chain[-1]}->host"]
    other = [d.bdf for d in system.topo.chain(target.owner)]
    if target.path == "BUS_ADDR":
        common = next((x for x in chain if x in other), None)
        up = chain[: chain.index(common)] if common else chain
        down = other[: other.index(common)] if common else other
        return [f"{a}->{b}" for a, b in zip(up, up[1:] + ([common] if common else []), strict=False)] + [
            f"{b}->{a}" for a, b in zip(down, down[1:] + ([common] if common else []), strict=False)]
    return ([f"{a}->{b}" for a, b in zip(chain, chain[1:], strict=False)] + [f"{chain[-1]}->host"]
            + [f"host->{other[-1]}"] + [f"{b}->{a}" for a, b in zip(other, other[1:], strict=False)])


def access_allowed(system: System, dev: str, target: Target, context: str) -> list[str]:
    """The sanitizer: every reason this access touches memory it may no longer touch."""
    from p2pdma.model import vfio  # late: vfio sits above the fabric's layer in the import order

    problems: list[str] = []
    if not system.present(dev):
        problems.append(f"requester {dev} was unplugged")
    if target.owner is None:
        return problems
    owner = target.owner
    if not system.present(owner):
        problems.append(f"{owner} BAR{target.bar} belongs to an unplugged device")
    if not vfio.bar_accessible(system, owner):
        problems.append(f"{owner} BAR{target.bar} no longer decodes (memory disabled, reset or closed)")
    if (owner, target.bar) in system.ext.get("released_bars", set()):
        problems.append(f"{owner} BAR{target.bar}: its driver unbound and released the provider")
    pages = system.ext.get("pages")
    if pages is not None:
        for pg in pages.pgmaps.values():
            if pg.owner == owner and pg.start <= target.phys < pg.start + pg.size and pg.gone:
                problems.append(f"{owner} BAR{target.bar}: P2P pages at {target.phys:#x} were torn down")
    return problems


def dma(system: System, dev: str, dma_addr: int, length: int, *, write: bool, data: bytes | Bytes | None = None,
        context: str = "") -> Bytes:
    """Perform one DMA: route, check, move the bytes, count. Returns what was read (or written).
    An IOMMU fault is recorded (it is the IOMMU doing its job) and re-raised; sanitizer
    findings become violations on the System and the access is not performed."""
    if length <= 0:
        raise KernelError(f"{dev}: DMA of {length} bytes", 22)
    st = state(system)
    try:
        target = route(system, dev, dma_addr, length)
    except IommuFault as exc:
        st.faults.append(f"{context}: {exc}")
        system.log(f"iommu fault {dev} {dma_addr:#x} ({context})")
        raise
    problems = access_allowed(system, dev, target, context)
    if problems:
        for p in problems:
            system.violate("sanitizer", f"{context or 'DMA'} by {dev} at {dma_addr:#x}: {p}", raise_it=False)
        return np.zeros(0, dtype=np.uint8)
    mem = st.ram if target.owner is None else st.bars.setdefault((target.owner, target.bar), Memory())
    off = target.offset
    if write:
        assert data is not None
        buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
        if len(buf) != length:
            raise KernelError(f"{dev}: write of {len(buf)} bytes declared {length}", 22)
        mem.write(off, buf)
        out = buf
    else:
        out = mem.read(off, length)
    st.bytes_by_path[target.path] += length
    st.requests_by_path[target.path] += 1
    for link in _links(system, dev, target):
        st.link_bytes[link] = st.link_bytes.get(link, 0) + length
    return out


def cpu_write(system: System, owner: str, bar: int, offset: int, data: bytes) -> None:
    """The CPU (or the device itself) fills its BAR: the reference data tests compare against."""
    state(system).bars.setdefault((owner, bar), Memory()).write(offset, np.frombuffer(data, dtype=np.uint8))


def cpu_read(system: System, owner: str, bar: int, offset: int, length: int) -> bytes:
    return bytes(state(system).bars.setdefault((owner, bar), Memory()).read(offset, length))


def ram_write(system: System, phys: int, data: bytes) -> None:
    state(system).ram.write(phys, np.frombuffer(data, dtype=np.uint8))


def ram_read(system: System, phys: int, length: int) -> bytes:
    return bytes(state(system).ram.read(phys, length))
