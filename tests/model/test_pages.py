"""The page layer: add_resource, alloc/free, virt_to_bus, sgl, publish/find, sysfs, mmap, teardown."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from p2pdma.errors import KernelError, LifetimeViolation
from p2pdma.model import pages as G
from p2pdma.model import provider as P
from p2pdma.model.system import PAGE_SIZE, System
from p2pdma.pci.topology import Topology
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import BUS_OFFSET, FAR, GPU, NIC, NVME, model_spec


def errno_of(fn: Any, *a: Any, **kw: Any) -> int:
    with pytest.raises(KernelError) as e:
        fn(*a, **kw)
    return e.value.errno


def test_add_resource_checks(system: System, topo: Topology) -> None:
    io_bar = next(b.index for b in topo[GPU].bars if b.is_io)
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, io_bar) == errno.EINVAL
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, 4) == errno.EINVAL  # no such BAR
    size = topo[GPU].bars[1].size
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, 1, 0, size) == errno.EINVAL  # offset >= len
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, 1, 2 * PAGE_SIZE, size - PAGE_SIZE) == errno.EINVAL
    # mm/memory_hotplug.c:check_pfn_span() via devm_memremap_pages() (7.2): 2 MiB sub-sections only
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, 1, 1 << 20, 1 << 20) == errno.EINVAL
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, 1, 2 << 20, 1 << 20) == errno.EINVAL
    assert errno_of(G.pci_p2pdma_add_resource, system, GPU, 1, 16 * PAGE_SIZE) == errno.EINVAL
    assert G.sysfs_p2pmem(system, GPU) is None
    G.pci_p2pdma_add_resource(system, GPU, 1, 2 << 20, 2 << 20)
    attrs = G.sysfs_p2pmem(system, GPU)
    assert attrs == {"size": f"{2 << 20}\n", "available": f"{2 << 20}\n", "published": "0\n"}
    G.pci_p2pdma_add_resource(system, GPU, 1)  # size 0: the rest of the BAR from offset 0
    assert G.sysfs_p2pmem(system, GPU) == {
        "size": f"{(2 << 20) + size}\n", "available": f"{(2 << 20) + size}\n", "published": "0\n"}
    assert G.sysfs_p2pmem(system, NIC) is None


def test_alloc_free_and_bus_addresses(system: System, topo: Topology) -> None:
    G.pci_p2pdma_add_resource(system, GPU, 1, 2 << 20)
    a = G.pci_alloc_p2pmem(system, GPU, 5000)  # rounds to two pages
    b = G.pci_alloc_p2pmem(system, GPU, PAGE_SIZE)
    assert a is not None and b is not None and b == a + 2 * PAGE_SIZE  # first fit, page granular
    bar = topo[GPU].bars[1]
    assert G.pci_p2pmem_virt_to_bus(system, GPU, a) == bar.start + BUS_OFFSET
    assert G.pci_p2pmem_virt_to_bus(system, GPU, b + 10) == bar.start + BUS_OFFSET + 2 * PAGE_SIZE + 10
    assert G.pci_p2pmem_virt_to_bus(system, GPU, 0) == 0
    assert G.pci_p2pmem_virt_to_bus(system, NIC, a) == 0  # no p2pdma on the NIC
    avail = int(G.sysfs_p2pmem(system, GPU)["available"])  # type: ignore[index]
    assert avail == (2 << 20) - 3 * PAGE_SIZE
    G.pci_free_p2pmem(system, GPU, a, 5000)
    assert G.pci_alloc_p2pmem(system, GPU, 2 * PAGE_SIZE) == a  # the hole is reused
    assert G.pci_alloc_p2pmem(system, GPU, 1 << 22) is None  # larger than the pool
    assert G.pci_alloc_p2pmem(system, NIC, PAGE_SIZE) is None
    sgl = G.pci_p2pmem_alloc_sgl(system, GPU, 3 * PAGE_SIZE)
    assert sgl is not None and len(sgl) == 1 and sgl[0][1] == 3 * PAGE_SIZE
    G.pci_p2pmem_free_sgl(system, GPU, sgl)
    # freeing what was never allocated is reported, not accepted
    with pytest.raises(LifetimeViolation, match="not allocated"):
        G.pci_free_p2pmem(system, GPU, a + 200 * PAGE_SIZE, PAGE_SIZE)
    assert system.violations[-1].kind == "bad-free"


def test_publish_and_find_prefers_the_direct_path(topo: Topology) -> None:
    s = System(topo, seed=3)
    for b in (GPU, NIC, NVME, FAR):
        s.bind(b, "drv")
    assert G.pci_p2pmem_find_many(s, [NIC]) is None  # nothing published
    for b, bar in ((GPU, 1), (NVME, 0), (FAR, 0)):
        G.pci_p2pdma_add_resource(s, b, bar)
        G.pci_p2pmem_publish(s, b, True)
    assert G.sysfs_p2pmem(s, GPU)["published"] == "1\n"  # type: ignore[index]
    # GPU and NVMe are both direct (distance 4) from the NIC; FAR is through the host bridge
    picks = {G.pci_p2pmem_find_many(s, [NIC]) for _ in range(40)}
    assert picks == {GPU, NVME}
    # from FAR's point of view: itself (distance 0) beats everything
    assert G.pci_p2pmem_find_many(s, [FAR]) == FAR
    # several clients: the sum of distances decides (GPU is 0 from itself, 4 from the NIC)
    assert G.pci_p2pmem_find_many(s, [GPU, NIC]) == GPU
    G.pci_p2pmem_publish(s, GPU, False)
    assert G.pci_p2pmem_find_many(s, [GPU]) == NVME
    # the same seed picks the same sequence
    s1, s2 = s.copy(), s.copy()
    assert [G.pci_p2pmem_find_many(s1, [NIC]) for _ in range(10)] == [
        G.pci_p2pmem_find_many(s2, [NIC]) for _ in range(10)]


def test_hmat_gives_no_p2p_path_in_any_kernel() -> None:
    """No kernel tree (6.1, 7.2, pci-next) lets an HMAT entry open a P2P path: the unlisted host bridge refuses."""
    spec = model_spec(host_id="8086:1234", hmat=[
        {"initiator": "pci0000:00", "target": "pci0000:80", "read_bandwidth": 9000,
         "write_bandwidth": 8000, "read_latency": 500, "write_latency": 600},
    ])
    t = parse_spec(spec).topology()
    s = System(t)
    for b in (GPU, NIC, FAR):
        s.bind(b, "drv")
    G.pci_p2pdma_add_resource(s, FAR, 0)
    G.pci_p2pmem_publish(s, FAR, True)
    r = G.pci_p2pdma_rank_many(s, FAR, [NIC])
    assert r is None
    assert G.pci_p2pmem_find_many(s, [NIC]) is None
    # the other direction has no HMAT path: the unlisted host bridge refuses it
    G.pci_p2pdma_add_resource(s, GPU, 1)
    G.pci_p2pmem_publish(s, GPU, True)
    assert G.pci_p2pdma_rank_many(s, GPU, [FAR]) is None
    # a direct provider outranks any host-bridge path
    assert G.pci_p2pmem_find_many(s, [NIC]) == GPU


def test_mmap_rules(system: System) -> None:
    assert errno_of(G.p2pmem_alloc_mmap, system, GPU, PAGE_SIZE) == errno.ENODEV  # no p2pdma yet
    G.pci_p2pdma_add_resource(system, GPU, 1, 2 << 20)  # 512 pages
    assert errno_of(G.p2pmem_alloc_mmap, system, GPU, PAGE_SIZE, shared=False) == errno.EINVAL
    assert errno_of(G.p2pmem_alloc_mmap, system, GPU, PAGE_SIZE, pgoff=1) == errno.EINVAL
    m = G.p2pmem_alloc_mmap(system, GPU, 300 * PAGE_SIZE)
    assert errno_of(G.p2pmem_alloc_mmap, system, GPU, 300 * PAGE_SIZE) == errno.ENOMEM
    assert G.live_pages(system, GPU) == 300
    G.p2pmem_munmap(system, m)
    assert G.live_pages(system, GPU) == 0
    assert int(G.sysfs_p2pmem(system, GPU)["available"]) == 2 << 20  # type: ignore[index]


def test_unbind_tears_down_mappings_and_waits_for_pages(system: System) -> None:
    G.pci_p2pdma_add_resource(system, GPU, 1, 2 << 20)
    prov = P.pcim_p2pdma_provider(system, GPU, 1)
    assert prov is not None
    m = G.p2pmem_alloc_mmap(system, GPU, 4 * PAGE_SIZE)
    held = G.pci_alloc_p2pmem(system, GPU, 2 * PAGE_SIZE)
    assert held is not None
    assert system.unbind(GPU) is False  # a driver allocation is still out: the unbind waits
    assert m not in G._state(system).mappings  # user mappings were torn down first
    assert G.live_pages(system, GPU) == 2
    assert G.pci_alloc_p2pmem(system, GPU, PAGE_SIZE) is None  # no new pages while dying
    assert errno_of(G.p2pmem_alloc_mmap, system, GPU, PAGE_SIZE) == errno.ENODEV
    assert system.driver(GPU) is None and GPU in system.bindings and not prov.released
    G.pci_free_p2pmem(system, GPU, held, 2 * PAGE_SIZE)  # the last page comes back...
    assert GPU not in system.bindings and prov.released  # ...and the unbind completes
    assert G.sysfs_p2pmem(system, GPU) is None and P.p2pdma_of(system, GPU) is None
    with pytest.raises(LifetimeViolation):
        G.pci_free_p2pmem(system, GPU, held, 2 * PAGE_SIZE)
