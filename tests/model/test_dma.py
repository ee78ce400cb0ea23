"""The phys-based DMA API and the IOMMU: mapping, translation, IOVA API, misuse, P2P dispatch."""

from __future__ import annotations

import errno

import pytest

from p2pdma.errors import DmaApiMisuse, IommuFault, KernelError
from p2pdma.model import dma as D
from p2pdma.model import provider as P
from p2pdma.model.system import PAGE_SIZE, System
from p2pdma.p2p.decide import MapType
from p2pdma.pci.topology import Topology
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import FAR, GPU, NIC, model_spec

RAM = 0x1_2345_6000


def test_map_translate_unmap(system: System) -> None:
    a = D.dma_map_phys(system, NIC, RAM + 0x10, 3 * PAGE_SIZE)
    assert a & (PAGE_SIZE - 1) == 0x10 and a != RAM + 0x10  # an IOVA, not the physical address
    for off in (0, PAGE_SIZE, 3 * PAGE_SIZE - 1):
        assert D.translate(system, NIC, a + off) == (RAM + 0x10 + off, False)
    with pytest.raises(IommuFault):
        D.translate(system, GPU, a)  # another IOMMU group has no such translation
    D.dma_unmap_phys(system, NIC, a, 3 * PAGE_SIZE)
    with pytest.raises(IommuFault):
        D.translate(system, NIC, a)


def test_misuse_is_caught(system: System) -> None:
    a = D.dma_map_phys(system, NIC, RAM, PAGE_SIZE, D.DmaDirection.TO_DEVICE)
    with pytest.raises(DmaApiMisuse, match="size"):
        D.dma_unmap_phys(system, NIC, a, 2 * PAGE_SIZE, D.DmaDirection.TO_DEVICE)
    with pytest.raises(DmaApiMisuse, match="FROM_DEVICE"):
        D.dma_unmap_phys(system, NIC, a, PAGE_SIZE, D.DmaDirection.FROM_DEVICE)
    with pytest.raises(DmaApiMisuse, match="never mapped"):
        D.dma_unmap_phys(system, NIC, a + 0x100000, PAGE_SIZE, D.DmaDirection.TO_DEVICE)
    D.dma_unmap_phys(system, NIC, a, PAGE_SIZE, D.DmaDirection.TO_DEVICE)
    with pytest.raises(DmaApiMisuse, match="twice"):
        D.dma_unmap_phys(system, NIC, a, PAGE_SIZE, D.DmaDirection.TO_DEVICE)
    for bad in (0, -5):
        with pytest.raises(KernelError) as e:
            D.dma_map_phys(system, NIC, RAM, bad)
        assert e.value.errno == errno.EINVAL


def test_dma_mask_limits_iovas_and_direct_mappings(topo: Topology) -> None:
    s = System(topo)  # default 32-bit masks
    a = D.dma_map_phys(s, NIC, 1 << 40, PAGE_SIZE)
    assert a < 1 << 32  # the IOVA honours the mask
    off = System(topo, iommu="off")
    with pytest.raises(KernelError) as e:
        D.dma_map_phys(off, NIC, 1 << 40, PAGE_SIZE)  # no IOMMU: the address itself must fit
    # kernel/dma/direct.h:dma_direct_map_phys() gives DMA_MAPPING_ERROR; dma_mapping_error() is -ENOMEM
    assert e.value.errno == errno.ENOMEM
    assert D.dma_map_phys(off, NIC, 0x1234_5000, PAGE_SIZE) == 0x1234_5000
    ident = System(topo, iommu="identity")
    ident.set_dma_mask(NIC, 64)
    assert D.dma_map_phys(ident, NIC, 1 << 40, PAGE_SIZE) == 1 << 40
    assert D.translate(ident, NIC, 1 << 40) == (1 << 40, False)


def test_iova_api(system: System) -> None:
    st = D.DmaIovaState()
    assert D.dma_iova_try_alloc(system, NIC, st, RAM, 4 * PAGE_SIZE)
    D.dma_iova_link(system, NIC, st, RAM, 0, 2 * PAGE_SIZE)
    D.dma_iova_link(system, NIC, st, 0x9990_0000, 2 * PAGE_SIZE, 2 * PAGE_SIZE)
    D.dma_iova_sync(system, NIC, st, 0, 4 * PAGE_SIZE)
    assert D.translate(system, NIC, st.addr + PAGE_SIZE) == (RAM + PAGE_SIZE, False)
    assert D.translate(system, NIC, st.addr + 2 * PAGE_SIZE) == (0x9990_0000, False)
    with pytest.raises(KernelError) as e:
        D.dma_iova_link(system, NIC, st, RAM, PAGE_SIZE, PAGE_SIZE)
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(KernelError) as e2:
        D.dma_iova_link(system, NIC, st, RAM, 3 * PAGE_SIZE, 2 * PAGE_SIZE)
    assert e2.value.errno == errno.EINVAL
    with pytest.raises(DmaApiMisuse):
        D.dma_iova_free(system, NIC, st)  # parts still linked
    D.dma_iova_unlink(system, NIC, st, 0, 2 * PAGE_SIZE)
    with pytest.raises(IommuFault):
        D.translate(system, NIC, st.addr)
    addr = st.addr
    D.dma_iova_destroy(system, NIC, st, 4 * PAGE_SIZE)
    assert not D.dma_use_iova(st)
    with pytest.raises(IommuFault):
        D.translate(system, NIC, addr + 2 * PAGE_SIZE)
    ident = System(system.topo, iommu="identity")
    assert D.dma_iova_try_alloc(ident, NIC, D.DmaIovaState(), RAM, PAGE_SIZE) is False


def test_p2p_dispatch(system: System, topo: Topology) -> None:
    P.pcim_p2pdma_init(system, GPU)
    prov = P.pcim_p2pdma_provider(system, GPU, 1)
    assert prov is not None
    phys = topo[GPU].bars[1].start
    a, k = D.dma_map_p2p(system, NIC, prov, phys, PAGE_SIZE)
    assert k == MapType.BUS_ADDR and a == phys + prov.bus_offset
    assert not D._translated(system, NIC).ptes  # type: ignore[union-attr]  # no IOMMU entry
    b, k2 = D.dma_map_p2p(system, FAR, prov, phys, PAGE_SIZE)
    assert k2 == MapType.THRU_HOST_BRIDGE and D.translate(system, FAR, b) == (phys, True)
    t2 = parse_spec(model_spec(host_id="8086:1234")).topology()
    s2 = System(t2)
    for x in (GPU, FAR):
        s2.bind(x, "d")
    P.pcim_p2pdma_init(s2, GPU)
    prov2 = P.pcim_p2pdma_provider(s2, GPU, 1)
    assert prov2 is not None
    with pytest.raises(KernelError) as e:
        D.dma_map_p2p(s2, FAR, prov2, phys, PAGE_SIZE)
    assert e.value.errno == errno.EREMOTEIO


def test_iova_allocator_top_down_aligned_and_reused() -> None:
    a = D.IovaAllocator()
    x = a.alloc(1, 0xFFFF)
    y = a.alloc(4, 0xFFFF)
    assert x == 0xFFFF and y is not None and y % 4 == 0 and y + 3 < x
    a.free(y)
    assert a.alloc(3, 0xFFFF) == y  # rounded to 4 pages, reused from the cache
    with pytest.raises(DmaApiMisuse):
        a.free(12345)
    small = D.IovaAllocator()
    assert [small.alloc(1, 3) for _ in range(4)] == [3, 2, 1, None]


def test_dma_domain_reserves_the_host_bridge_windows() -> None:
    """drivers/iommu/dma-iommu.c:iova_reserve_pci_windows() (7.2): no IOVA inside a host bridge
    memory window, where it would alias a peer's BAR."""
    from p2pdma.sources.spec import parse_spec
    from tests.model import conftest as C

    s = System(parse_spec(C.model_spec()).topology())
    windows = D.host_bridge_windows(s, C.NIC)
    # the GPU's 16 MiB BAR0 and the span of the 64-bit BARs behind pci0000:00, as bus addresses
    assert windows == [(0x40_8000_0000, 0x40_80FF_FFFF), (0x140_0000_0000, 0x140_421F_FFFF)]
    dom = D.domain_of(s, C.NIC)
    assert dom is not None
    for lo, hi in reversed(windows):  # top-down, as the allocator's cached node moves
        got = dom.iova.alloc(1, hi >> 12)  # asked to end inside the window: lands just below it
        assert got == (lo >> 12) - 1
    assert D.domain_of(System(s.topo, iommu="identity"), C.NIC).iova.starts == []  # type: ignore[union-attr]
