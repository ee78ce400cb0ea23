"""What NVMe really does with peer memory in Linux 7.2: it imports no dma-buf. A read or write
whose data buffer is P2P pages (``pci_alloc_p2pmem()`` of another device) is mapped per request
by the block layer: pci_p2pdma_state() on the request's first segment decides the path (bus
address, or the IOMMU / direct mapping with DMA_ATTR_MMIO through the host bridge), any other map
type fails the request. The pages' pgmap reference, not a revoke, keeps the memory alive: the
provider's unbind waits until the request's pages are freed (model/pages.py).

Mirrors blk_rq_dma_map_iter_start(), blk_dma_map_iter_start(), blk_dma_map_bus() and
blk_dma_map_direct() of block/blk-mq-dma.c and the callers in drivers/nvme/host/pci.c (7.2).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from p2pdma.errors import KernelError
from p2pdma.model import dma as D
from p2pdma.model import pages as G
from p2pdma.model.provider import P2pdmaMapState, pci_p2pdma_bus_addr_map, pci_p2pdma_state
from p2pdma.model.system import System, fast_copy
from p2pdma.p2p.decide import MapType


@dataclass(slots=True)
class BlkDmaMapping:
    """A request's data mapped for the NVMe controller: the DMA segments and how they were made."""

    dev: str
    map: MapType
    segments: list[tuple[int, int]]
    phys: list[tuple[int, int]] = field(default_factory=list)
    direction: D.DmaDirection = D.DmaDirection.BIDIRECTIONAL


def blk_rq_dma_map(system: System, dma_dev: str, phys: list[tuple[int, int]], *, write: bool) -> BlkDmaMapping:
    """Map a request's data segments (CPU physical ranges) for ``dma_dev``. Mirrors
    blk_rq_dma_map_iter_start() (block/blk-mq-dma.c, 7.2): pci_p2pdma_state() once per request
    (a fresh ``struct pci_p2pdma_map_state``), on the first segment; BUS_ADDR gives bus addresses
    (no IOMMU mapping), THRU_HOST_BRIDGE and NONE go through dma_map_phys() (MMIO for P2P), any
    other type is BLK_STS_INVAL (EINVAL); a mapping error is BLK_STS_RESOURCE (ENOMEM)."""
    if not phys:
        raise KernelError("a request with no data segments", errno.EINVAL)
    direction = D.DmaDirection.TO_DEVICE if write else D.DmaDirection.FROM_DEVICE
    state = P2pdmaMapState()
    provider = G.page_provider(system, phys[0][0])
    kind = pci_p2pdma_state(system, state, dma_dev, provider)
    if kind == MapType.BUS_ADDR:
        assert provider is not None
        segs = [(pci_p2pdma_bus_addr_map(system, provider, p), n) for p, n in phys]
        return BlkDmaMapping(dma_dev, kind, segs, list(phys), direction)
    if kind not in (MapType.THRU_HOST_BRIDGE, MapType.NONE):
        raise KernelError(f"{dma_dev} cannot reach the P2P pages at {phys[0][0]:#x} ({kind.name})", errno.EINVAL)
    attrs = D.DMA_ATTR_MMIO if kind == MapType.THRU_HOST_BRIDGE else 0
    mapped: list[tuple[int, int]] = []
    try:
        for p, n in phys:
            mapped.append((D.dma_map_phys(system, dma_dev, p, n, direction, attrs), n))
    except KernelError as exc:
        for addr, n in mapped:
            D.dma_unmap_phys(system, dma_dev, addr, n, direction, attrs)
        raise KernelError(f"{dma_dev}: mapping the request failed ({exc})", errno.ENOMEM) from None
    return BlkDmaMapping(dma_dev, kind, mapped, list(phys), direction)


def blk_rq_dma_unmap(system: System, m: BlkDmaMapping) -> None:
    """Undo blk_rq_dma_map(): nothing for bus addresses (blk_rq_dma_unmap() skips BUS_ADDR)."""
    if m.map == MapType.BUS_ADDR:
        return
    attrs = D.DMA_ATTR_MMIO if m.map == MapType.THRU_HOST_BRIDGE else 0
    for addr, n in m.segments:
        D.dma_unmap_phys(system, m.dev, addr, n, m.direction, attrs)


fast_copy(BlkDmaMapping)
