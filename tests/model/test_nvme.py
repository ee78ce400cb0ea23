"""NVMe with P2P pages as 7.2 does it (block/blk-mq-dma.c): pci_p2pdma_state() per request decides
bus addresses or a mapping through the host bridge; a request with ordinary memory maps as usual."""

from __future__ import annotations

import errno

import pytest

from p2pdma.errors import KernelError
from p2pdma.model import dma as D
from p2pdma.model import nvme as N
from p2pdma.model import pages as G
from p2pdma.model import provider as P
from p2pdma.model.system import PAGE_SIZE, System
from p2pdma.p2p.decide import MapType
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import FAR, GPU, NIC, NVME, model_spec

TOPO = parse_spec(model_spec()).topology()


def _p2p_pages(s: System, n: int) -> int:
    """CPU physical address of ``n`` pages of the GPU's P2P pool."""
    virt = G.pci_alloc_p2pmem(s, GPU, n * PAGE_SIZE)
    assert virt is not None
    pg = next(iter(G._state(s).pgmaps.values()))
    return pg.start + (virt - pg.virt)


def _system() -> System:
    s = System(TOPO, seed=1)
    for b in (GPU, NIC, NVME, FAR):
        s.bind(b, "drv")
        s.set_dma_mask(b, 64)
    G.pci_p2pdma_add_resource(s, GPU, 1, 2 << 20)
    return s


def test_nvme_behind_the_same_switch_gets_bus_addresses() -> None:
    s = _system()
    phys = _p2p_pages(s, 4)
    m = N.blk_rq_dma_map(s, NVME, [(phys, 2 * PAGE_SIZE), (phys + 2 * PAGE_SIZE, 2 * PAGE_SIZE)], write=False)
    prov = P.pcim_p2pdma_provider(s, GPU, 1)
    assert prov is not None and m.map == MapType.BUS_ADDR
    off = prov.bus_offset
    assert m.segments == [(phys + off, 2 * PAGE_SIZE), (phys + off + 2 * PAGE_SIZE, 2 * PAGE_SIZE)]
    assert s.dma_debug is None or not s.dma_debug.live  # no IOMMU mapping for bus addresses
    N.blk_rq_dma_unmap(s, m)


def test_nvme_across_host_bridges_maps_mmio_or_fails_the_request() -> None:
    s = _system()
    phys = _p2p_pages(s, 1)
    prov = P.pcim_p2pdma_provider(s, GPU, 1)
    assert prov is not None
    assert P.pci_p2pdma_map_type(s, prov, FAR) == MapType.THRU_HOST_BRIDGE  # another host bridge
    m = N.blk_rq_dma_map(s, FAR, [(phys, PAGE_SIZE)], write=True)
    assert m.map == MapType.THRU_HOST_BRIDGE and s.dma_debug is not None
    assert [x.attrs & D.DMA_ATTR_MMIO for x in s.dma_debug.live.values()] == [D.DMA_ATTR_MMIO]
    N.blk_rq_dma_unmap(s, m)
    assert not s.dma_debug.live
    # a client the provider cannot reach (the map-type cache says NOT_SUPPORTED): BLK_STS_INVAL
    p2p = P.p2pdma_of(s, GPU)
    assert p2p is not None
    p2p.map_types[P.map_types_idx(TOPO[FAR])] = MapType.NOT_SUPPORTED
    with pytest.raises(KernelError) as ei:
        N.blk_rq_dma_map(s, FAR, [(phys, PAGE_SIZE)], write=True)
    assert ei.value.errno == errno.EINVAL


def test_ordinary_memory_maps_without_mmio() -> None:
    s = _system()
    m = N.blk_rq_dma_map(s, NVME, [(1 << 33, PAGE_SIZE)], write=False)
    assert m.map == MapType.NONE and s.dma_debug is not None
    assert [x.attrs for x in s.dma_debug.live.values()] == [0]
    N.blk_rq_dma_unmap(s, m)
    with pytest.raises(KernelError):
        N.blk_rq_dma_map(s, NVME, [], write=False)


def test_unbind_of_the_provider_waits_for_the_requests_pages() -> None:
    """The pages' pgmap reference keeps the BAR alive for NVMe (no revoke in this path)."""
    s = _system()
    virt = G.pci_alloc_p2pmem(s, GPU, PAGE_SIZE)
    assert virt is not None
    assert s.unbind(GPU) is False  # memunmap_pages() waits for the page
    G.pci_free_p2pmem(s, GPU, virt, PAGE_SIZE)
    assert GPU not in s.bindings
