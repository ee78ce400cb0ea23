"""The lower layer: one p2pdma provider per memory BAR, with no pages behind it.

Mirrors pcim_p2pdma_init(), pcim_p2pdma_provider() and pci_p2pdma_map_type() of
drivers/pci/p2pdma.c and ``struct p2pdma_provider`` of include/linux/pci-p2pdma.h. The provider's
lifetime is the owning driver's binding: unbinding releases it, and any later use is reported.
This module must not import the page layer.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from p2pdma.errors import KernelError
from p2pdma.model.system import System, devm_handler, fast_copy
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.pci.topology import PCI_STD_NUM_BARS, Device

PCI_ANY = -1


@dataclass(slots=True)
class P2pdmaProvider:
    """``struct p2pdma_provider``: the owner device and the BAR's bus offset (bus - CPU phys)."""

    owner: str
    bar: int
    bus_offset: int
    handle: int
    released: bool = False


@dataclass(slots=True)
class PciP2pdma:
    """``struct pci_p2pdma``: providers per BAR, the map-type cache, and the page layer's pool."""

    mem: dict[int, P2pdmaProvider] = field(default_factory=dict)
    map_types: dict[int, MapType] = field(default_factory=dict)
    pool: object | None = None
    p2pmem_published: bool = False


def p2pdma_of(system: System, bdf: str) -> PciP2pdma | None:
    """``pdev->p2pdma``: the device's p2pdma state, None before init or after release."""
    p2p = system.p2pdma.get(bdf)
    assert p2p is None or isinstance(p2p, PciP2pdma)
    return p2p


def map_types_idx(dev: Device) -> int:
    """The cache key: ``(pci_domain_nr << 16) | pci_dev_id``. Mirrors map_types_idx()."""
    return (dev.domain << 16) | (dev.bus << 8) | dev.devfn


def pci_resource_is_mem(dev: Device, bar: int) -> bool:
    """``pci_resource_flags(pdev, bar) & IORESOURCE_MEM``."""
    return any(b.index == bar and b.is_mem and b.size > 0 for b in dev.bars)


def _bar(dev: Device, bar: int):  # type: ignore[no-untyped-def]
    for b in dev.bars:
        if b.index == bar:
            return b
    return None


def pcim_p2pdma_init(system: System, bdf: str) -> None:
    """Set up the device's providers, one per memory BAR. Mirrors pcim_p2pdma_init().

    EOPNOTSUPP for a device with non-mappable BARs; ENODEV without a bound driver (the state is
    device-managed and dies with the binding). Calling it again is a no-op.
    """
    dev = system.device(bdf)
    if bdf in system.non_mappable_bars:
        raise KernelError(f"{bdf}: BARs are not mappable", errno.EOPNOTSUPP)
    if bdf in system.p2pdma:
        return
    p2p = PciP2pdma()
    for b in dev.bars:
        if b.index < PCI_STD_NUM_BARS and b.is_mem and b.size > 0:
            p2p.mem[b.index] = P2pdmaProvider(
                owner=bdf, bar=b.index, bus_offset=b.bus_offset, handle=system.handle()
            )
    system.devm_add_action(bdf, "pci_p2pdma_release")
    system.p2pdma[bdf] = p2p
    system.ext.setdefault("released_bars", set()).difference_update({(bdf, b) for b in p2p.mem})
    system.log(f"pcim_p2pdma_init {bdf}")


def pcim_p2pdma_provider(system: System, bdf: str, bar: int) -> P2pdmaProvider | None:
    """The provider of one BAR, or None for a non-memory BAR, non-mappable BARs, or a device
    whose pcim_p2pdma_init() was not called. Mirrors pcim_p2pdma_provider()."""
    dev = system.device(bdf)
    if not 0 <= bar < PCI_STD_NUM_BARS:
        return None
    if not pci_resource_is_mem(dev, bar) or bdf in system.non_mappable_bars:
        return None
    p2p = p2pdma_of(system, bdf)
    if p2p is None:
        return None
    return p2p.mem.get(bar)


@devm_handler("pci_p2pdma_release")
def _pci_p2pdma_release(system: System, bdf: str) -> bool:
    """Mirrors pci_p2pdma_release(): drop the device's p2pdma state; its providers end here."""
    p2p = system.p2pdma.pop(bdf, None)
    if p2p is not None:
        released = system.ext.setdefault("released_bars", set())
        for prov in p2p.mem.values():
            prov.released = True
            released.add((bdf, prov.bar))
        p2p.map_types.clear()
    system.log(f"pci_p2pdma_release {bdf}")
    return True


def pci_p2pdma_map_type(system: System, provider: P2pdmaProvider, client: str) -> MapType:
    """How ``client`` reaches the provider's memory, from the cache or computed and cached.
    Mirrors pci_p2pdma_map_type(); using a released provider is a lifetime violation."""
    system.check_live(f"provider {provider.owner} BAR{provider.bar} used after its driver unbound",
                      not provider.released)
    p2p = p2pdma_of(system, provider.owner)
    if p2p is None:
        return MapType.NOT_SUPPORTED
    if client not in system.topo:
        return MapType.NOT_SUPPORTED  # not a PCI device (dev_is_pci() fails)
    cdev = system.topo[client]
    cached = p2p.map_types.get(map_types_idx(cdev), MapType.UNKNOWN)
    if cached != MapType.UNKNOWN:
        return cached
    verdict = calc_map_type_and_dist(system.topo, provider.owner, client, system.profile)
    p2p.map_types[map_types_idx(cdev)] = verdict.map_type
    return verdict.map_type


def pci_p2pdma_bus_addr_map(system: System, provider: P2pdmaProvider, paddr: int) -> int:
    """The bus address a peer uses for CPU physical ``paddr``. Mirrors pci_p2pdma_bus_addr_map()."""
    system.check_live(f"provider {provider.owner} BAR{provider.bar} used after its driver unbound",
                      not provider.released)
    return paddr + provider.bus_offset


def provider_range(system: System, provider: P2pdmaProvider) -> tuple[int, int]:
    """The BAR's CPU physical [start, end] that the provider covers."""
    b = _bar(system.topo[provider.owner], provider.bar)
    assert b is not None
    return b.start, b.end


@dataclass(slots=True)
class P2pdmaMapState:
    """``struct pci_p2pdma_map_state``: the last provider looked up and its map type."""

    mem: P2pdmaProvider | None = None
    map: MapType = MapType.UNKNOWN


def pci_p2pdma_state(
    system: System, state: P2pdmaMapState, dev: str, provider: P2pdmaProvider | None
) -> MapType:
    """Map type for a physical range owned by ``provider`` (None: ordinary memory, MAP_NONE),
    cached in ``state`` across a scatterlist. Mirrors pci_p2pdma_state() /
    __pci_p2pdma_update_state() without needing a struct page."""
    if provider is None:
        return MapType.NONE
    if state.mem is not provider:
        state.mem = provider
        state.map = pci_p2pdma_map_type(system, provider, dev)
    return state.map


fast_copy(P2pdmaProvider, PciP2pdma, P2pdmaMapState)
