"""The fabric: memory that holds real bytes, DMA requests routed by the topology, per-link counters,
and a sanitizer that flags any access to memory the requester may no longer touch.

A request from a device for a DMA address is routed the way the hardware routes it: an address in
a peer BAR's bus range below a common switch with no redirecting ACS goes straight across
(BUS_ADDR, no IOMMU); anything else goes up to the root complex, where the requester's IOMMU domain
translates it (or faults) and the host bridge delivers it to RAM or to a BAR by CPU address. As the
hardware translates and routes each packet on its own, a request is cut where its IOVA pages stop
being physically contiguous and where a BAR ends, and each piece is routed by itself.

Lookups go through an index of the (frozen) topology built once per machine: BARs sorted by bus
address per host bridge and by CPU address, and the links between any two devices. It is derived
data, not run-time state, so it lives beside the System, not in it.
"""

from __future__ import annotations

import bisect
import errno
import functools
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import numpy.typing as npt

from p2pdma.errors import IommuFault, KernelError
from p2pdma.model import dma as D
from p2pdma.model.system import PAGE_SHIFT, PAGE_SIZE, System
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.pci.topology import Bar, Topology

CHUNK = 1 << 21  # memory is allocated lazily in 2 MiB chunks
Bytes = npt.NDArray[np.uint8]
U64_LIMIT = 1 << 64


@dataclass(frozen=True, slots=True)
class Pattern:
    """A chunk holding bytes ``start .. start + CHUNK`` of pattern stream ``seed`` (see pattern_slice):
    test data that costs no memory until a part of the chunk is overwritten."""

    seed: int
    start: int


@functools.lru_cache(maxsize=8)
def _pattern_block(seed: int, block: int) -> Bytes:
    """Block ``block`` (CHUNK bytes) of pattern stream ``seed``: seeded random bytes, read-only."""
    arr = np.random.default_rng([seed, 0x9D, block]).integers(0, 256, size=CHUNK, dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def pattern_slice(seed: int, start: int, n: int) -> Bytes:
    """Bytes ``start .. start + n`` of the deterministic pattern stream ``seed`` (a new array)."""
    out = np.empty(n, dtype=np.uint8)
    pos = 0
    while pos < n:
        block, inner = divmod(start + pos, CHUNK)
        take = min(CHUNK - inner, n - pos)
        out[pos : pos + take] = _pattern_block(seed, block)[inner : inner + take]
        pos += take
    return out


Chunk = Bytes | int | Pattern


def _piece(c: Chunk | None, inner: int, take: int) -> Bytes | int:
    """Bytes ``inner .. inner + take`` of one chunk: an array slice, or the fill byte."""
    if c is None:
        return 0
    if isinstance(c, Pattern):
        return pattern_slice(c.seed, c.start + inner, take)
    if isinstance(c, np.ndarray):
        return c[inner : inner + take]
    return c


def _shifted(a: Chunk | None, b: Chunk | None, inner: int) -> int | Pattern | None:
    """The chunk made of bytes ``inner..`` of chunk ``a`` and ``..inner`` of the next one ``b``, when
    that is again a token (one fill byte, or one pattern stream read on); None when it needs bytes."""
    if isinstance(a, Pattern) and isinstance(b, Pattern) and a.seed == b.seed and b.start == a.start + CHUNK:
        return Pattern(a.seed, a.start + inner)
    if not isinstance(a, (np.ndarray, Pattern)) and not isinstance(b, (np.ndarray, Pattern)) and (a or 0) == (b or 0):
        return a or 0
    return None


@dataclass(slots=True)
class Memory:
    """A sparse byte store: pages (CHUNK bytes) appear on first write; unwritten bytes read as zero.

    A chunk may be a constant fill (an int byte value: ``fill()`` of 1 GiB costs no memory) or a
    real array; arrays may be shared with a copy (read-only, copied when next written), so that
    ``copy.deepcopy`` of a System (the checker) and ``copy_from`` do not duplicate bytes."""

    chunks: dict[int, Chunk] = field(default_factory=dict)

    def _chunk(self, idx: int) -> Bytes:
        """The chunk ``idx`` as a private, writable array (materializing fills and patterns,
        un-sharing copies)."""
        c = self.chunks.get(idx)
        if isinstance(c, np.ndarray):
            if c.flags.writeable:
                return c
            c = c.copy()
        elif isinstance(c, Pattern):
            c = pattern_slice(c.seed, c.start, CHUNK)
        else:
            c = np.full(CHUNK, c or 0, dtype=np.uint8)
        self.chunks[idx] = c
        return c

    def fill_pattern(self, off: int, n: int, seed: int, start: int = 0) -> None:
        """Write bytes ``start .. start + n`` of pattern stream ``seed`` at ``off``; whole chunks are
        kept as Pattern tokens (no memory), partial ones are materialized."""
        pos = 0
        while pos < n:
            idx, inner = divmod(off + pos, CHUNK)
            take = min(CHUNK - inner, n - pos)
            if take == CHUNK:
                self.chunks[idx] = Pattern(seed, start + pos)
            else:
                self._chunk(idx)[inner : inner + take] = pattern_slice(seed, start + pos, take)
            pos += take

    def same(self, off: int, other: Memory, other_off: int, n: int) -> bool:
        """Whether ``n`` bytes at ``off`` equal ``n`` bytes of ``other`` at ``other_off``, chunk by
        chunk (shared arrays, equal fills and equal pattern tokens compare without reading)."""
        pos = 0
        while pos < n:
            ai, ain = divmod(off + pos, CHUNK)
            bi, bin_ = divmod(other_off + pos, CHUNK)
            take = min(CHUNK - ain, CHUNK - bin_, n - pos)
            a, b = self.chunks.get(ai), other.chunks.get(bi)
            whole = ain == 0 and bin_ == 0 and take == CHUNK
            if not (whole and (a is b or (not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray)
                                          and (a or 0) == (b or 0)))):
                pa, pb = _piece(a, ain, take), _piece(b, bin_, take)
                if isinstance(pa, int) and isinstance(pb, int):
                    if pa != pb:
                        return False
                elif not np.array_equal(np.broadcast_to(pa, (take,)), np.broadcast_to(pb, (take,))):
                    return False
            pos += take
        return True

    def write(self, off: int, data: Bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            idx, inner = divmod(off + pos, CHUNK)
            take = min(CHUNK - inner, n - pos)
            if take == CHUNK:
                self.chunks[idx] = np.array(data[pos : pos + take], dtype=np.uint8)  # no read of the old one
            else:
                self._chunk(idx)[inner : inner + take] = data[pos : pos + take]
            pos += take

    def fill(self, off: int, n: int, value: int) -> None:
        """Set ``n`` bytes at ``off`` to ``value``; whole chunks cost nothing (zero ones are dropped)."""
        pos = 0
        while pos < n:
            idx, inner = divmod(off + pos, CHUNK)
            take = min(CHUNK - inner, n - pos)
            if take == CHUNK:
                if value:
                    self.chunks[idx] = value
                else:
                    self.chunks.pop(idx, None)
            else:
                self._chunk(idx)[inner : inner + take] = value
            pos += take

    def copy_from(self, src: Memory, src_off: int, dst_off: int, n: int) -> None:
        """Copy ``n`` bytes from ``src`` (which may be self); chunk-aligned whole chunks are shared."""
        if src is self and src_off < dst_off < src_off + n:
            self.write(dst_off, src.read(src_off, n))  # overlapping forward copy: through a buffer
            return
        pos = 0
        while pos < n:
            sidx, sin = divmod(src_off + pos, CHUNK)
            didx, din = divmod(dst_off + pos, CHUNK)
            if sin == 0 and din == 0 and n - pos >= CHUNK:
                c = src.chunks.get(sidx)
                if c is None:
                    self.chunks.pop(didx, None)
                elif isinstance(c, np.ndarray):
                    c.flags.writeable = False
                    self.chunks[didx] = c
                else:
                    self.chunks[didx] = c
                pos += CHUNK
                continue
            if din == 0 and n - pos >= CHUNK:
                shifted = _shifted(src.chunks.get(sidx), src.chunks.get(sidx + 1), sin)
                if shifted is not None:  # a whole chunk of one fill or one pattern, at another phase
                    if shifted == 0:
                        self.chunks.pop(didx, None)
                    else:
                        self.chunks[didx] = shifted
                    pos += CHUNK
                    continue
            take = min(CHUNK - sin, CHUNK - din, n - pos)
            self.write(dst_off + pos, src.read(src_off + pos, take))
            pos += take

    def read_into(self, off: int, out: Bytes) -> None:
        """Copy ``len(out)`` bytes at ``off`` into ``out`` (one copy; zeros where nothing was written)."""
        pos = 0
        n = len(out)
        while pos < n:
            idx, inner = divmod(off + pos, CHUNK)
            take = min(CHUNK - inner, n - pos)
            out[pos : pos + take] = _piece(self.chunks.get(idx), inner, take)
            pos += take

    def read(self, off: int, n: int) -> Bytes:
        out = np.empty(n, dtype=np.uint8)
        self.read_into(off, out)
        return out

    @property
    def resident(self) -> int:
        """Bytes of memory the store holds (arrays; a shared one is counted by each holder)."""
        return sum(CHUNK for c in self.chunks.values() if isinstance(c, np.ndarray))

    def __deepcopy__(self, memo: dict[int, object]) -> Memory:
        """Share every array with the copy, read-only: whichever side writes next copies the chunk."""
        for c in self.chunks.values():
            if isinstance(c, np.ndarray):
                c.flags.writeable = False
        return Memory(dict(self.chunks))

    def _canon(self, idx: int) -> Bytes | int | None:
        c = self.chunks.get(idx)
        if isinstance(c, Pattern):
            c = pattern_slice(c.seed, c.start, CHUNK)
        if isinstance(c, np.ndarray):
            first = int(c[0])
            if not c.any():
                return None
            if (c == first).all():
                return first
            return c
        return c or None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Memory):
            return False
        for idx in self.chunks.keys() | other.chunks.keys():
            x, y = self.chunks.get(idx), other.chunks.get(idx)
            if x is y or (isinstance(x, Pattern) and x == y):
                continue
            a, b = self._canon(idx), other._canon(idx)
            if a is None or b is None or isinstance(a, int) or isinstance(b, int):
                if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or a != b:
                    return False
            elif not np.array_equal(a, b):
                return False
        return True


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


# -- the topology index (derived from the frozen topology, shared by every System on it) ----------
_Entry = tuple[int, int, str, Bar]  # start, end (exclusive), owner, BAR


class _Ranges:
    """Non-empty address ranges sorted by start, for bisection; overlapping ones (a malformed
    machine) resolve to the first owner in topology order, as a linear scan would."""

    def __init__(self, entries: list[tuple[int, _Entry]]) -> None:
        entries.sort(key=lambda e: (e[1][0], e[0]))
        self.order = [o for o, _ in entries]
        self.entries = [e for _, e in entries]
        self.starts = [e[0] for e in self.entries]
        self.max_end: list[int] = []
        m = 0
        for e in self.entries:
            m = max(m, e[1])
            self.max_end.append(m)

    def find(self, addr: int) -> _Entry | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        best: tuple[int, _Entry] | None = None
        while i >= 0 and self.max_end[i] > addr:
            e = self.entries[i]
            if addr < e[1] and (best is None or self.order[i] < best[0]):
                best = (self.order[i], e)
            i -= 1
        return None if best is None else best[1]

    def next_start(self, addr: int) -> int:
        """The first range start above ``addr`` (2**64 when none)."""
        i = bisect.bisect_right(self.starts, addr)
        return self.starts[i] if i < len(self.starts) else U64_LIMIT


class _TopoIndex:
    """BARs by bus address (per host bridge: bus addresses are per hierarchy) and by CPU address,
    each device's host bridge, and the link names between devices (filled on first use)."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        by_bus: dict[str, list[tuple[int, _Entry]]] = {}
        by_phys: list[tuple[int, _Entry]] = []
        self.host_bridge: dict[str, str] = {}
        for order, d in enumerate(topo.devices):
            self.host_bridge[d.bdf] = d.host_bridge
            for b in d.bars:
                if not b.is_mem or b.size <= 0:
                    continue
                by_bus.setdefault(d.host_bridge, []).append((order, (b.bus_start, b.bus_start + b.size, d.bdf, b)))
                by_phys.append((order, (b.start, b.end + 1, d.bdf, b)))
        self.bus = {hb: _Ranges(e) for hb, e in by_bus.items()}
        self.phys = _Ranges(by_phys)
        self.links: dict[tuple[str, str | None, str], tuple[str, ...]] = {}


_INDEXES: dict[int, _TopoIndex] = {}
_INDEX_LIMIT = 16


def _index(topo: Topology) -> _TopoIndex:
    idx = _INDEXES.get(id(topo))
    if idx is None or idx.topo is not topo:
        if len(_INDEXES) >= _INDEX_LIMIT:
            del _INDEXES[next(iter(_INDEXES))]
        idx = _INDEXES[id(topo)] = _TopoIndex(topo)
    return idx


def _bar_by_bus(system: System, addr: int) -> tuple[str, Bar] | None:
    """The BAR whose bus range holds ``addr``, in any hierarchy (first in topology order)."""
    for d in system.topo.devices:
        for b in d.bars:
            if b.is_mem and b.bus_start <= addr < b.bus_start + b.size:
                return d.bdf, b
    return None


def _bar_by_phys(system: System, phys: int) -> tuple[str, Bar] | None:
    """The BAR whose CPU physical range holds ``phys``."""
    e = _index(system.topo).phys.find(phys)
    return None if e is None else (e[2], e[3])


def _map_type(system: System, provider: str, client: str) -> MapType:
    st = state(system)
    key = (provider, client)
    m = st.route_cache.get(key)
    if m is None:
        m = st.route_cache[key] = calc_map_type_and_dist(system.topo, provider, client, system.profile).map_type
    return m


def _route_span(system: System, dev: str, addr: int, length: int) -> tuple[Target, int]:
    """Route the request's first piece: its target and how many bytes of ``length`` go there."""
    idx = _index(system.topo)
    ranges = idx.bus.get(idx.host_bridge.get(dev, ""))
    hit = None if ranges is None else ranges.find(addr)
    if hit is not None:
        start, end, owner, bar = hit
        if owner == dev or _map_type(system, owner, dev) == MapType.BUS_ADDR:
            off = addr - start
            return Target(owner, bar.index, off, bar.start + off, "BUS_ADDR"), min(length, end - addr)
    dom = D.domain_of(system, dev)
    if dom is None or dom.type != "dma":
        phys, n = addr, length
    else:
        ptes = dom.ptes
        pfn = addr >> PAGE_SHIFT
        pte = ptes.get(pfn)
        if pte is None:
            raise IommuFault(f"{dev}: IOMMU fault at {addr:#x} (no translation)")
        phys = (pte[0] << PAGE_SHIFT) | (addr & (PAGE_SIZE - 1))
        n = PAGE_SIZE - (addr & (PAGE_SIZE - 1))
        k = 1
        while n < length:
            nxt = ptes.get(pfn + k)
            if nxt is None or nxt[0] != pte[0] + k:
                break  # not mapped, or not contiguous: the next piece routes (or faults) by itself
            n += PAGE_SIZE
            k += 1
        n = min(n, length)
    e = idx.phys.find(phys)
    if e is None:
        return Target(None, -1, phys, phys, "HOST_MEMORY"), min(n, idx.phys.next_start(phys) - phys)
    start, end, owner, bar = e
    return Target(owner, bar.index, phys - start, phys, "THRU_HOST_BRIDGE"), min(n, end - phys)


def _check_range(dev: str, dma_addr: int, length: int) -> None:
    if length <= 0:
        raise KernelError(f"{dev}: DMA of {length} bytes", errno.EINVAL)
    if dma_addr < 0 or dma_addr + length > U64_LIMIT:
        raise KernelError(f"{dev}: DMA address {dma_addr:#x}+{length:#x} out of range", errno.EINVAL)


def route(system: System, dev: str, dma_addr: int, length: int) -> Target:
    """Where a request from ``dev`` for ``dma_addr`` goes (IommuFault when the IOMMU has no
    translation; EINVAL when the range does not land in one place: spans discontiguous IOVA
    pages or crosses the end of a BAR, which dma() splits)."""
    _check_range(dev, dma_addr, length)
    target, n = _route_span(system, dev, dma_addr, length)
    if n < length:
        raise KernelError(f"{dev}: access {dma_addr:#x}+{length:#x} does not land in one place",
                          errno.EINVAL)
    return target


def _compute_links(system: System, dev: str, target: Target) -> tuple[str, ...]:
    chain = [d.bdf for d in system.topo.chain(dev)]
    if target.owner is None:
        return tuple([f"{a}->{b}" for a, b in zip(chain, chain[1:], strict=False)] + [f"{chain[-1]}->host"])
    other = [d.bdf for d in system.topo.chain(target.owner)]
    if target.path == "BUS_ADDR":
        common = next((x for x in chain if x in other), None)
        up = chain[: chain.index(common)] if common else chain
        down = other[: other.index(common)] if common else other
        return tuple([f"{a}->{b}" for a, b in zip(up, up[1:] + ([common] if common else []), strict=False)] + [
            f"{b}->{a}" for a, b in zip(down, down[1:] + ([common] if common else []), strict=False)])
    return tuple([f"{a}->{b}" for a, b in zip(chain, chain[1:], strict=False)] + [f"{chain[-1]}->host"]
                 + [f"host->{other[-1]}"] + [f"{b}->{a}" for a, b in zip(other, other[1:], strict=False)])


def _link_names(system: System, dev: str, target: Target) -> tuple[str, ...]:
    cache = _index(system.topo).links
    key = (dev, target.owner, target.path)
    links = cache.get(key)
    if links is None:
        links = cache[key] = _compute_links(system, dev, target)
    return links


def _links(system: System, dev: str, target: Target) -> list[str]:
    """The links a request crosses, named child->parent, for the per-link counters."""
    return list(_link_names(system, dev, target))


_VFIO: list[ModuleType] = []


def _vfio() -> ModuleType:
    if not _VFIO:
        from p2pdma.model import vfio  # late: vfio sits above the fabric's layer in the import order

        _VFIO.append(vfio)
    return _VFIO[0]


def access_allowed(system: System, dev: str, target: Target, context: str) -> list[str]:
    """The sanitizer: every reason this access touches memory it may no longer touch."""
    problems: list[str] = []
    if not system.present(dev):
        problems.append(f"requester {dev} was unplugged")
    if target.owner is None:
        return problems
    owner = target.owner
    if not system.present(owner):
        problems.append(f"{owner} BAR{target.bar} belongs to an unplugged device")
    if not _vfio().bar_accessible(system, owner):
        problems.append(f"{owner} BAR{target.bar} no longer decodes (memory disabled, reset or closed)")
    released = system.ext.get("released_bars")
    if released and (owner, target.bar) in released:
        problems.append(f"{owner} BAR{target.bar}: its driver unbound and released the provider")
    pages = system.ext.get("pages")
    if pages is not None:
        for pg in pages.pgmaps.values():
            if pg.owner == owner and pg.start <= target.phys < pg.start + pg.size and pg.gone:
                problems.append(f"{owner} BAR{target.bar}: P2P pages at {target.phys:#x} were torn down")
    return problems


def _memory(st: FabricState, target: Target) -> Memory:
    if target.owner is None:
        return st.ram
    key = (target.owner, target.bar)
    mem = st.bars.get(key)
    if mem is None:
        mem = st.bars[key] = Memory()
    return mem


def dma(system: System, dev: str, dma_addr: int, length: int, *, write: bool,
        data: bytes | Bytes | tuple[Memory, int] | None = None, context: str = "",
        into: tuple[Memory, int] | None = None) -> Bytes:
    """Perform one DMA: route each piece, check, move the bytes, count. Returns what was read (or
    written). An IOMMU fault (on any piece) is recorded (it is the IOMMU doing its job) and
    re-raised before any byte moves; sanitizer findings become violations on the System and the
    access is not performed. ``data`` may be a (Memory, offset) source and ``into`` a (Memory,
    offset) destination for a read: bytes then move chunk by chunk, shared where aligned, and the
    return value is empty (a 1 GiB transfer costs no 1 GiB buffer)."""
    if dev not in system.topo:
        raise KernelError(f"no PCI device {dev}", errno.ENODEV)
    _check_range(dev, dma_addr, length)
    buf: Bytes | None = None
    src: tuple[Memory, int] | None = None
    if write:
        if data is None:
            raise KernelError(f"{dev}: a write needs data", errno.EINVAL)
        if isinstance(data, tuple):
            src = data
        else:
            buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
            if len(buf) != length:
                raise KernelError(f"{dev}: write of {len(buf)} bytes declared {length}", errno.EINVAL)
    st = state(system)
    pieces: list[tuple[Target, int, int]] = []
    pos = 0
    try:
        while pos < length:
            target, n = _route_span(system, dev, dma_addr + pos, length - pos)
            pieces.append((target, pos, n))
            pos += n
    except IommuFault as exc:
        st.faults.append(f"{context}: {exc}")
        system.log(f"iommu fault {dev} {dma_addr + pos:#x} ({context})")
        raise
    problems: list[str] = []
    for target, _, _ in pieces:
        for p in access_allowed(system, dev, target, context):
            if p not in problems:
                problems.append(p)
    if problems:
        for p in problems:
            system.violate("sanitizer", f"{context or 'DMA'} by {dev} at {dma_addr:#x}: {p}", raise_it=False)
        return np.zeros(0, dtype=np.uint8)
    if src is not None:
        for target, p0, n in pieces:
            _memory(st, target).copy_from(src[0], src[1] + p0, target.offset, n)
        out = np.zeros(0, dtype=np.uint8)
    elif buf is not None:
        for target, p0, n in pieces:
            _memory(st, target).write(target.offset, buf[p0 : p0 + n])
        out = buf
    elif into is not None:
        for target, p0, n in pieces:
            into[0].copy_from(_memory(st, target), target.offset, into[1] + p0, n)
        out = np.zeros(0, dtype=np.uint8)
    elif len(pieces) == 1:
        out = _memory(st, pieces[0][0]).read(pieces[0][0].offset, length)
    else:
        out = np.empty(length, dtype=np.uint8)
        for target, p0, n in pieces:
            _memory(st, target).read_into(target.offset, out[p0 : p0 + n])
    link_bytes = st.link_bytes
    for target, _, n in pieces:
        st.bytes_by_path[target.path] += n
        st.requests_by_path[target.path] += 1
        for link in _link_names(system, dev, target):
            link_bytes[link] = link_bytes.get(link, 0) + n
    return out


def cpu_write(system: System, owner: str, bar: int, offset: int, data: bytes) -> None:
    """The CPU (or the device itself) fills its BAR: the reference data tests compare against."""
    state(system).bars.setdefault((owner, bar), Memory()).write(offset, np.frombuffer(data, dtype=np.uint8))


def cpu_read(system: System, owner: str, bar: int, offset: int, length: int) -> bytes:
    return bytes(state(system).bars.setdefault((owner, bar), Memory()).read(offset, length))


def cpu_fill(system: System, owner: str, bar: int, offset: int, length: int, value: int) -> None:
    """The CPU sets ``length`` bytes of a BAR to ``value`` (memset): whole chunks cost no memory."""
    if not 0 <= value <= 0xFF:
        raise KernelError(f"fill value {value} is not a byte", errno.EINVAL)
    state(system).bars.setdefault((owner, bar), Memory()).fill(offset, length, value)


def cpu_fill_pattern(system: System, owner: str, bar: int, offset: int, length: int, seed: int) -> None:
    """The CPU writes ``length`` bytes of pattern stream ``seed`` into a BAR (whole chunks cost no memory)."""
    state(system).bars.setdefault((owner, bar), Memory()).fill_pattern(offset, length, seed)


def bar_memory(system: System, owner: str, bar: int) -> Memory:
    """The sparse store behind one BAR (created empty: unwritten bytes read as zero)."""
    return state(system).bars.setdefault((owner, bar), Memory())


def ram_write(system: System, phys: int, data: bytes) -> None:
    state(system).ram.write(phys, np.frombuffer(data, dtype=np.uint8))


def ram_read(system: System, phys: int, length: int) -> bytes:
    return bytes(state(system).ram.read(phys, length))
