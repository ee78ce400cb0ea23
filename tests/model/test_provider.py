"""The provider layer: pcim_p2pdma_init(), pcim_p2pdma_provider(), pci_p2pdma_map_type(), lifetime."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from p2pdma.errors import KernelError, LifetimeViolation
from p2pdma.model import provider as P
from p2pdma.model.system import System
from p2pdma.p2p.decide import MapType
from p2pdma.pci.topology import Topology
from tests.model.conftest import BUS_OFFSET, FAR, GPU, NIC, NVME


def test_one_provider_per_memory_bar_with_bus_offset(system: System, topo: Topology) -> None:
    P.pcim_p2pdma_init(system, GPU)
    provs = {b: P.pcim_p2pdma_provider(system, GPU, b) for b in range(6)}
    mem = {b.index for b in topo[GPU].bars if b.is_mem}
    assert {b for b, p in provs.items() if p is not None} == mem == {0, 1}
    io_bar = next(b.index for b in topo[GPU].bars if b.is_io)
    assert provs[io_bar] is None  # no provider for an I/O BAR
    p1 = provs[1]
    assert p1 is not None and p1.owner == GPU and p1.bar == 1
    # the host bridge translates: bus address = CPU physical + offset
    assert p1.bus_offset == BUS_OFFSET == topo[GPU].bars[1].bus_start - topo[GPU].bars[1].start
    start = topo[GPU].bars[1].start
    assert P.pci_p2pdma_bus_addr_map(system, p1, start + 0x1000) == start + 0x1000 + BUS_OFFSET
    # a second device in another domain/host bridge has offset 0
    P.pcim_p2pdma_init(system, FAR)
    far = P.pcim_p2pdma_provider(system, FAR, 0)
    assert far is not None and far.bus_offset == 0
    P.pcim_p2pdma_init(system, GPU)  # again: a no-op, same providers
    assert P.pcim_p2pdma_provider(system, GPU, 1) is p1


def test_init_errors(system: System, topo: Topology) -> None:
    system.non_mappable_bars.add(NVME)
    with pytest.raises(KernelError) as e:
        P.pcim_p2pdma_init(system, NVME)
    assert e.value.errno == errno.EOPNOTSUPP
    assert P.pcim_p2pdma_provider(system, NVME, 0) is None
    s2 = System(topo)
    with pytest.raises(KernelError) as e2:
        P.pcim_p2pdma_init(s2, GPU)  # no driver bound: device-managed state has no owner
    assert e2.value.errno == errno.ENODEV
    assert P.pcim_p2pdma_provider(s2, GPU, 1) is None  # init never ran
    with pytest.raises(KernelError) as e3:
        P.pcim_p2pdma_init(system, "0000:ee:00.0")
    assert e3.value.errno == errno.ENODEV


def test_map_type_is_cached_by_domain_and_device_id(system: System, topo: Topology) -> None:
    P.pcim_p2pdma_init(system, GPU)
    prov = P.pcim_p2pdma_provider(system, GPU, 1)
    assert prov is not None
    assert P.pci_p2pdma_map_type(system, prov, NIC) == MapType.BUS_ADDR
    assert P.pci_p2pdma_map_type(system, prov, FAR) == MapType.THRU_HOST_BRIDGE
    p2p = P.p2pdma_of(system, GPU)
    assert p2p is not None
    key = (topo[NIC].domain << 16) | (topo[NIC].bus << 8) | topo[NIC].devfn
    assert p2p.map_types[key] == MapType.BUS_ADDR
    # the cache answers, not a new computation
    p2p.map_types[key] = MapType.NOT_SUPPORTED
    assert P.pci_p2pdma_map_type(system, prov, NIC) == MapType.NOT_SUPPORTED
    assert P.pci_p2pdma_map_type(system, prov, "not-a-pci-device") == MapType.NOT_SUPPORTED


def test_unbind_releases_providers_and_later_use_is_a_violation(system: System) -> None:
    P.pcim_p2pdma_init(system, GPU)
    prov = P.pcim_p2pdma_provider(system, GPU, 1)
    assert prov is not None
    assert system.unbind(GPU) is True
    assert prov.released and P.p2pdma_of(system, GPU) is None
    with pytest.raises(LifetimeViolation):
        P.pci_p2pdma_map_type(system, prov, NIC)
    with pytest.raises(LifetimeViolation):
        P.pci_p2pdma_bus_addr_map(system, prov, 0)
    assert [v.kind for v in system.violations] == ["use-after-release", "use-after-release"]
    assert any("unbind 0000:03:00.0" in h for h in system.violations[0].history)
    # rebinding makes new providers; the old handle stays dead
    system.bind(GPU, "drv")
    P.pcim_p2pdma_init(system, GPU)
    new = P.pcim_p2pdma_provider(system, GPU, 1)
    assert new is not None and new is not prov and not new.released and prov.released


def test_system_copy_and_compare(system: System) -> None:
    P.pcim_p2pdma_init(system, GPU)
    c = system.copy()
    assert c == system and c.topo is system.topo
    c.unbind(GPU)
    assert c != system and P.p2pdma_of(system, GPU) is not None


def test_provider_layer_and_dma_work_without_the_page_layer() -> None:
    """The design's point: importing and using providers and the DMA API with pages unavailable."""
    code = r'''
import sys
sys.modules["p2pdma.model.pages"] = None  # any import of the page layer now fails
from p2pdma.model.system import System
from p2pdma.model import provider as P, dma as D
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import model_spec, GPU, NIC, FAR
t = parse_spec(model_spec()).topology()
s = System(t)
for b in (GPU, NIC, FAR):
    s.bind(b, "drv"); s.set_dma_mask(b, 64)
P.pcim_p2pdma_init(s, GPU)
prov = P.pcim_p2pdma_provider(s, GPU, 1)
phys = t[GPU].bars[1].start
a, k = D.dma_map_p2p(s, NIC, prov, phys, 8192)
assert k.name == "BUS_ADDR" and a == phys + prov.bus_offset
b, k2 = D.dma_map_p2p(s, FAR, prov, phys, 8192)
assert k2.name == "THRU_HOST_BRIDGE" and D.translate(s, FAR, b) == (phys, True)
D.dma_unmap_phys(s, FAR, b, 8192)
assert "p2pdma.model.pages" not in sys.modules or sys.modules["p2pdma.model.pages"] is None
print("ok")
'''
    repo = Path(__file__).resolve().parents[2]  # where `tests` imports from, whatever the cwd is now
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
