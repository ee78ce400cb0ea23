"""The fabric: sparse memory, routing by topology (bus addresses per hierarchy, IOMMU translation,
pieces cut at discontiguous pages and BAR ends), counters per path and link, the sanitizer."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdma.errors import IommuFault, KernelError
from p2pdma.model import dma as D
from p2pdma.model import fabric as F
from p2pdma.model import vfio as V
from p2pdma.model.provider import pcim_p2pdma_init, pcim_p2pdma_provider
from p2pdma.model.scenario import pattern_bytes
from p2pdma.model.system import System
from p2pdma.pci.topology import Topology
from p2pdma.sources.spec import parse_spec
from tests.helpers import dev, hb, machine
from tests.model.conftest import FAR, GPU, NIC, NVME, model_spec

TOPO = parse_spec(model_spec()).topology()
BAR1 = next(b for b in TOPO[GPU].bars if b.index == 1)


def fresh(iommu: str = "dma") -> System:
    s = System(TOPO, seed=1, iommu=iommu)
    for bdf in (GPU, NIC, NVME, FAR):
        s.bind(bdf, "drv")
        s.set_dma_mask(bdf, 64)
    return s


# -- memory -----------------------------------------------------------------------------------------
def test_memory_is_sparse_and_reads_zero_where_unwritten() -> None:
    m = F.Memory()
    assert bytes(m.read(12345, 100)) == bytes(100) and m.chunks == {}
    data = np.frombuffer(pattern_bytes(1, F.CHUNK + 300), dtype=np.uint8)
    m.write(F.CHUNK - 100, data)  # spans three chunks
    assert sorted(m.chunks) == [0, 1, 2]
    assert bytes(m.read(F.CHUNK - 100, len(data))) == data.tobytes()
    got = m.read(F.CHUNK - 200, 150)
    assert bytes(got[:100]) == bytes(100) and bytes(got[100:]) == data[:50].tobytes()
    out = np.full(10, 7, dtype=np.uint8)
    m.read_into(3 * F.CHUNK, out)  # an unwritten chunk overwrites with zeros
    assert bytes(out) == bytes(10)
    other = F.Memory()
    other.write(F.CHUNK - 100, data)
    assert m == other
    other.write(0, np.ones(1, dtype=np.uint8))
    assert m != other


def test_read_returns_a_copy_not_a_view() -> None:
    s = fresh()
    F.cpu_write(s, GPU, 1, 0, b"\x01" * 4096)
    got = F.dma(s, NIC, BAR1.bus_start, 4096, write=False)
    F.cpu_write(s, GPU, 1, 0, b"\x02" * 4096)
    assert bytes(got) == b"\x01" * 4096


# -- routing ----------------------------------------------------------------------------------------
def test_peer_below_the_switch_goes_by_bus_address_without_the_iommu() -> None:
    s = fresh()
    F.cpu_write(s, GPU, 1, 8192, pattern_bytes(2, 4096))
    t = F.route(s, NIC, BAR1.bus_start + 8192, 4096)
    assert (t.owner, t.bar, t.offset, t.phys, t.path) == (GPU, 1, 8192, BAR1.start + 8192, "BUS_ADDR")
    assert bytes(F.dma(s, NIC, BAR1.bus_start + 8192, 4096, write=False)) == pattern_bytes(2, 4096)
    st_ = F.state(s)
    assert st_.bytes_by_path == {"BUS_ADDR": 4096, "THRU_HOST_BRIDGE": 0, "HOST_MEMORY": 0}
    assert st_.requests_by_path["BUS_ADDR"] == 1
    # up from the NIC to the switch's upstream side and down to the GPU, never to the host
    assert st_.link_bytes == {"0000:04:00.0->0000:02:02.0": 4096, "0000:02:02.0->0000:01:00.0": 4096,
                              "0000:01:00.0->0000:02:01.0": 4096, "0000:02:01.0->0000:03:00.0": 4096}
    assert st_.faults == [] and s.iommu is None  # no IOMMU domain was even needed


def test_other_host_bridge_goes_through_the_iommu_and_faults_without_a_mapping() -> None:
    s = fresh()
    pcim_p2pdma_init(s, GPU)
    prov = pcim_p2pdma_provider(s, GPU, 1)
    assert prov is not None
    F.cpu_write(s, GPU, 1, 0, pattern_bytes(3, 8192))
    iova, kind = D.dma_map_p2p(s, FAR, prov, BAR1.start, 8192)
    assert kind.name == "THRU_HOST_BRIDGE"
    t = F.route(s, FAR, iova, 8192)
    assert (t.owner, t.offset, t.path) == (GPU, 0, "THRU_HOST_BRIDGE")
    assert bytes(F.dma(s, FAR, iova, 8192, write=False, context="far")) == pattern_bytes(3, 8192)
    assert any(k.endswith("->host") for k in F.state(s).link_bytes)
    # the bus address itself is no translation for a device of another hierarchy
    with pytest.raises(IommuFault):
        F.dma(s, FAR, BAR1.bus_start, 4096, write=False, context="stray")
    assert F.state(s).faults and "stray" in F.state(s).faults[-1]
    assert F.state(s).bytes_by_path["THRU_HOST_BRIDGE"] == 8192


def test_iova_contiguous_over_discontiguous_ranges_is_split() -> None:
    """Two BAR ranges linked into one IOVA range: one DMA across the seam reads both (this raised
    EINVAL before, leaving the importer's fence unsignalled)."""
    s = fresh()
    F.cpu_write(s, GPU, 1, 0, pattern_bytes(4, 8192))
    F.cpu_write(s, GPU, 1, 1 << 20, pattern_bytes(5, 8192))
    state = D.DmaIovaState()
    assert D.dma_iova_try_alloc(s, FAR, state, 0, 16384)
    D.dma_iova_link(s, FAR, state, BAR1.start, 0, 8192, attrs=D.DMA_ATTR_MMIO)
    D.dma_iova_link(s, FAR, state, BAR1.start + (1 << 20), 8192, 8192, attrs=D.DMA_ATTR_MMIO)
    got = F.dma(s, FAR, state.addr + 4096, 8192, write=False)
    assert bytes(got) == pattern_bytes(4, 8192)[4096:] + pattern_bytes(5, 8192)[:4096]
    assert F.state(s).requests_by_path["THRU_HOST_BRIDGE"] == 2
    with pytest.raises(KernelError) as ei:
        F.route(s, FAR, state.addr + 4096, 8192)  # route() is for one piece only
    assert ei.value.errno == errno.EINVAL
    data = pattern_bytes(6, 16384)
    F.dma(s, FAR, state.addr, 16384, write=True, data=data)
    assert F.cpu_read(s, GPU, 1, 0, 8192) + F.cpu_read(s, GPU, 1, 1 << 20, 8192) == data


def test_a_hole_in_the_iova_range_faults_before_anything_moves() -> None:
    s = fresh()
    state = D.DmaIovaState()
    assert D.dma_iova_try_alloc(s, FAR, state, 0, 3 * 4096)
    D.dma_iova_link(s, FAR, state, BAR1.start, 0, 4096, attrs=D.DMA_ATTR_MMIO)
    D.dma_iova_link(s, FAR, state, BAR1.start + 8192, 8192, 4096, attrs=D.DMA_ATTR_MMIO)
    with pytest.raises(IommuFault):
        F.dma(s, FAR, state.addr, 3 * 4096, write=True, data=bytes(range(256)) * 48)
    assert F.cpu_read(s, GPU, 1, 0, 4096) == bytes(4096)  # atomic: the first page was not written
    assert F.state(s).bytes_by_path["THRU_HOST_BRIDGE"] == 0 and len(F.state(s).faults) == 1


def test_a_request_past_the_end_of_a_bar_continues_at_the_next_address() -> None:
    s = fresh(iommu="off")
    end = BAR1.bus_start + BAR1.size
    nic_bar = next(b for b in TOPO[NIC].bars if b.index == 0)
    assert nic_bar.bus_start == end  # the NIC's own BAR follows the GPU's in bus space
    F.cpu_write(s, GPU, 1, BAR1.size - 4096, b"\xaa" * 4096)
    F.cpu_write(s, NIC, 0, 0, b"\xbb" * 4096)
    got = F.dma(s, NIC, end - 4096, 8192, write=False)
    assert bytes(got) == b"\xaa" * 4096 + b"\xbb" * 4096
    assert F.state(s).requests_by_path["BUS_ADDR"] == 2
    with pytest.raises(KernelError):
        F.route(s, NIC, end - 4096, 8192)


def test_without_iommu_other_addresses_reach_host_memory() -> None:
    s = fresh(iommu="off")
    F.ram_write(s, 0x1000, b"ram!" * 1024)
    assert bytes(F.dma(s, FAR, 0x1000, 4096, write=False)) == b"ram!" * 1024
    assert F.state(s).bytes_by_path["HOST_MEMORY"] == 4096
    assert F.state(s).link_bytes["0000:80:01.0->host"] == 4096


def overlapping() -> Topology:
    """Two host bridges whose bus address spaces overlap: bus addresses are per hierarchy."""
    return parse_spec(machine([
        hb("pci0000:00", [{"bdf": "0000:00:00.0", "id": "8086:2020", "class": 0x060000},
                          dev("0000:00:01.0", "8086:352a", port="root-port", children=[
                              dev("0000:01:00.0", bars=[{"size": "1M", "bits": 64, "start": 0x100000000}])])],
           bus_offset=0x100000000),
        hb("pci0000:80", [{"bdf": "0000:80:00.0", "id": "8086:2020", "class": 0x060000},
                          dev("0000:80:01.0", "8086:352a", port="root-port", children=[
                              dev("0000:81:00.0", bars=[{"size": "1M", "bits": 64, "start": 0x200000000}])])]),
    ])).topology()


def test_bus_addresses_are_looked_up_in_the_requesters_hierarchy() -> None:
    topo = overlapping()
    a, b = topo["0000:01:00.0"].bars[0], topo["0000:81:00.0"].bars[0]
    assert a.bus_start == b.bus_start  # the same bus address in two hierarchies
    s = System(topo, iommu="off")
    t = F.route(s, "0000:81:00.0", b.bus_start, 4096)  # its own BAR, not the first match elsewhere
    assert (t.owner, t.path) == ("0000:81:00.0", "BUS_ADDR")


@settings(max_examples=200, deadline=None)
@given(addr=st.integers(0, (1 << 42) - 1), pick=st.integers(0, 50))
def test_phys_index_agrees_with_a_linear_scan(addr: int, pick: int) -> None:
    s = System(TOPO)
    bars = [(d.bdf, b) for d in TOPO.devices for b in d.bars if b.is_mem and b.size]
    if pick < len(bars):  # land on, just before or just past a BAR
        bdf, b = bars[pick]
        addr = random.Random(addr).choice([b.start, b.end, b.end + 1, b.start - 1, b.start + addr % b.size])
    want = next(((bdf, b) for bdf, b in bars if b.start <= addr <= b.end), None)
    assert F._bar_by_phys(s, addr) == want


# -- errors and the sanitizer -----------------------------------------------------------------------
def test_bad_requests_are_refused() -> None:
    s = fresh()
    for args, want in (((NIC, BAR1.bus_start, 0), errno.EINVAL), ((NIC, -1, 4096), errno.EINVAL),
                       ((NIC, (1 << 64) - 4096, 8192), errno.EINVAL), (("0000:ee:00.0", 0, 4096), errno.ENODEV)):
        with pytest.raises(KernelError) as ei:
            F.dma(s, *args, write=False)
        assert ei.value.errno == want
    with pytest.raises(KernelError) as ei:
        F.dma(s, NIC, BAR1.bus_start, 4096, write=True)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(KernelError):
        F.dma(s, NIC, BAR1.bus_start, 4096, write=True, data=b"short")
    assert F.state(s).bytes_by_path["BUS_ADDR"] == 0


def test_sanitizer_flags_a_bar_whose_driver_released_its_provider() -> None:
    s = fresh()
    pcim_p2pdma_init(s, GPU)
    s.unbind(GPU)
    got = F.dma(s, NIC, BAR1.bus_start, 4096, write=True, data=bytes(4096), context="late")
    assert len(got) == 0 and F.state(s).bytes_by_path["BUS_ADDR"] == 0
    assert [v.kind for v in s.violations] == ["sanitizer"]
    assert "late" in s.violations[0].message and "released the provider" in s.violations[0].message


def test_sanitizer_flags_a_bar_that_no_longer_decodes_and_an_unplugged_requester() -> None:
    s = System(TOPO, seed=1)
    V.vfio_open(s, GPU)
    assert V.vfio_set_memory(s, GPU, False)
    assert len(F.dma(s, NIC, BAR1.bus_start, 4096, write=False)) == 0
    assert "no longer decodes" in s.violations[-1].message
    assert V.vfio_set_memory(s, GPU, True)
    assert len(F.dma(s, NIC, BAR1.bus_start, 4096, write=False)) == 4096
    s.unplug(NIC)
    F.dma(s, NIC, BAR1.bus_start, 4096, write=False)
    assert "requester 0000:04:00.0 was unplugged" in s.violations[-1].message
    assert len(s.violations) == 2


def test_copies_are_independent_and_equal() -> None:
    s = fresh()
    F.cpu_write(s, GPU, 1, 0, b"x" * 4096)
    F.dma(s, NIC, BAR1.bus_start, 4096, write=False)
    c = s.copy()
    assert c == s
    F.dma(c, NIC, BAR1.bus_start, 4096, write=True, data=b"y" * 4096)
    assert F.cpu_read(s, GPU, 1, 0, 4) == b"xxxx" and F.cpu_read(c, GPU, 1, 0, 4) == b"yyyy"
    assert c != s


# -- sparse memory: fills, shared chunks, copies ----------------------------------------------------
def test_a_1gib_fill_costs_no_memory_and_reads_back() -> None:
    m = F.Memory()
    m.fill(0, 1 << 30, 0xA5)
    assert m.resident == 0 and len(m.chunks) == (1 << 30) // F.CHUNK
    assert bytes(m.read((1 << 30) - 3, 3)) == b"\xa5" * 3
    m.fill(F.CHUNK + 1, 2, 0)  # a partial fill materializes only that chunk
    assert m.resident == F.CHUNK and bytes(m.read(F.CHUNK, 4)) == b"\xa5\x00\x00\xa5"
    m.fill(0, 1 << 30, 0)
    assert m.chunks == {} and m == F.Memory()


def test_copies_share_chunks_until_written() -> None:
    import copy

    m = F.Memory()
    data = np.frombuffer(pattern_bytes(3, 2 * F.CHUNK), dtype=np.uint8)
    m.write(0, data)
    c = copy.deepcopy(m)
    assert c == m and all(c.chunks[k] is m.chunks[k] for k in m.chunks)  # shared, no bytes duplicated
    c.write(10, np.ones(4, dtype=np.uint8))
    assert bytes(m.read(10, 4)) == data[10:14].tobytes() and bytes(c.read(10, 4)) == b"\x01" * 4
    m.write(F.CHUNK, np.zeros(1, dtype=np.uint8))
    assert int(c.read(F.CHUNK, 1)[0]) == int(data[F.CHUNK])
    d = F.Memory()
    d.copy_from(m, 0, 4 * F.CHUNK, 2 * F.CHUNK)  # aligned: chunks shared
    assert d.chunks[4] is m.chunks[0] and bytes(d.read(4 * F.CHUNK, 2 * F.CHUNK)) == bytes(m.read(0, 2 * F.CHUNK))
    d.copy_from(m, 5, 7, 100)  # unaligned: through a buffer
    assert bytes(d.read(7, 100)) == bytes(m.read(5, 100))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["write", "fill", "copy"]), st.integers(0, 3 * 4096),
                          st.integers(1, 3 * 4096), st.integers(0, 255)), max_size=12))
def test_sparse_memory_matches_a_flat_array(ops: list[tuple[str, int, int, int]]) -> None:
    """Every mix of writes, fills and self-copies reads back as one flat bytearray would."""
    import p2pdma.model.fabric as fab

    old = fab.CHUNK
    fab.CHUNK = 4096  # small chunks so that the test crosses many chunk borders
    try:
        m, flat = F.Memory(), np.zeros(8 * 4096, dtype=np.uint8)
        for op, off, n, v in ops:
            if op == "write":
                buf = np.frombuffer(pattern_bytes(v, n), dtype=np.uint8)
                m.write(off, buf)
                flat[off : off + n] = buf
            elif op == "fill":
                m.fill(off, n, v)
                flat[off : off + n] = v
            else:
                src = v * 64
                m.copy_from(m, src, off, n)
                flat[off : off + n] = flat[src : src + n].copy()
        assert bytes(m.read(0, len(flat))) == flat.tobytes()
    finally:
        fab.CHUNK = old
