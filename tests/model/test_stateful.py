"""Stateful tests: the pool (alloc/free/publish/unbind in any order) and the IOMMU (map/unmap in any
order), checked against simple reference bookkeeping after every step."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pdma.errors import DmaApiMisuse, IommuFault, LifetimeViolation
from p2pdma.model import dma as D
from p2pdma.model import pages as G
from p2pdma.model.system import PAGE_SIZE, System
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import GPU, NIC, model_spec

TOPO = parse_spec(model_spec()).topology()
POOL = 512 * PAGE_SIZE  # one 2 MiB sub-section (devm_memremap_pages())


class PoolMachine(RuleBasedStateMachine):
    """available == size - live allocations; pages never leak nor double-free; unbind waits."""

    def __init__(self) -> None:
        super().__init__()
        self.s = System(TOPO)
        self.s.bind(GPU, "drv")
        G.pci_p2pdma_add_resource(self.s, GPU, 1, POOL)
        self.live: dict[int, int] = {}  # virt -> bytes (rounded to pages)
        self.maps: dict[int, int] = {}  # mapping id -> bytes
        self.unbinding = False
        self.gone = False

    @precondition(lambda self: not self.gone)
    @rule(pages=st.integers(1, 20))
    def alloc(self, pages: int) -> None:
        v = G.pci_alloc_p2pmem(self.s, GPU, pages * PAGE_SIZE - 7)
        used = sum(self.live.values()) + sum(self.maps.values())
        if self.unbinding:
            assert v is None
            return
        if v is None:
            # first fit may fail on fragmentation, never when a whole free block would do
            assert POOL - used < pages * PAGE_SIZE or len(self.live) + len(self.maps) > 0
            return
        assert all(not (v < a + n and a < v + pages * PAGE_SIZE) for a, n in self.live.items())
        self.live[v] = pages * PAGE_SIZE

    @precondition(lambda self: not self.gone and not self.unbinding)
    @rule(pages=st.integers(1, 8))
    def mmap(self, pages: int) -> None:
        try:
            m = G.p2pmem_alloc_mmap(self.s, GPU, pages * PAGE_SIZE)
        except Exception as exc:
            assert getattr(exc, "errno", None) == 12  # ENOMEM only
            return
        self.maps[m] = pages * PAGE_SIZE

    @precondition(lambda self: bool(self.maps))
    @rule(data=st.data())
    def munmap(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(sorted(self.maps)))
        G.p2pmem_munmap(self.s, m)
        del self.maps[m]

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        v = data.draw(st.sampled_from(sorted(self.live)))
        G.pci_free_p2pmem(self.s, GPU, v, self.live.pop(v))
        if self.unbinding and not self.live:
            self.gone = True

    @precondition(lambda self: bool(self.live) and not self.gone)
    @rule(data=st.data())
    def double_free_is_caught(self, data: st.DataObject) -> None:
        v = data.draw(st.sampled_from(sorted(self.live)))
        n = self.live.pop(v)
        G.pci_free_p2pmem(self.s, GPU, v, n)
        before = len(self.s.violations)
        try:
            G.pci_free_p2pmem(self.s, GPU, v, n)
        except LifetimeViolation:
            pass
        assert len(self.s.violations) == before + 1
        if self.unbinding and not self.live:
            self.gone = True

    @precondition(lambda self: not self.gone)
    @rule(flag=st.booleans())
    def publish(self, flag: bool) -> None:
        G.pci_p2pmem_publish(self.s, GPU, flag)
        if not self.unbinding:
            assert G.sysfs_p2pmem(self.s, GPU)["published"] == f"{int(flag)}\n"  # type: ignore[index]

    @precondition(lambda self: not self.unbinding and not self.gone)
    @rule()
    def unbind(self) -> None:
        done = self.s.unbind(GPU)
        self.maps.clear()  # user mappings are torn down first
        self.unbinding = True
        assert done == (not self.live)
        self.gone = done

    @precondition(lambda self: self.gone)
    @rule()
    def rebind(self) -> None:
        self.s.bind(GPU, "drv")
        G.pci_p2pdma_add_resource(self.s, GPU, 1, POOL)
        self.unbinding = self.gone = False

    @invariant()
    def accounting(self) -> None:
        attrs = G.sysfs_p2pmem(self.s, GPU)
        if self.gone:
            assert attrs is None and GPU not in self.s.bindings
            return
        assert attrs is not None
        used = sum(self.live.values()) + sum(self.maps.values())
        assert int(attrs["size"]) == POOL
        assert int(attrs["available"]) == POOL - used
        assert G.live_pages(self.s, GPU) * PAGE_SIZE == used


class IommuMachine(RuleBasedStateMachine):
    """Every live mapping translates to its physical address; everything else faults."""

    def __init__(self) -> None:
        super().__init__()
        self.s = System(TOPO)
        self.s.set_dma_mask(NIC, 40)
        self.live: dict[int, tuple[int, int]] = {}  # dma addr -> (phys, size)
        self.dead: set[int] = set()

    @rule(page=st.integers(0, 1 << 20), off=st.integers(0, PAGE_SIZE - 1), size=st.integers(1, 5 * PAGE_SIZE))
    def map(self, page: int, off: int, size: int) -> None:
        phys = page * PAGE_SIZE + off
        a = D.dma_map_phys(self.s, NIC, phys, size)
        assert a < 1 << 40 and a & (PAGE_SIZE - 1) == off
        self.live[a] = (phys, size)
        self.dead.discard(a)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def unmap(self, data: st.DataObject) -> None:
        a = data.draw(st.sampled_from(sorted(self.live)))
        _, size = self.live.pop(a)
        D.dma_unmap_phys(self.s, NIC, a, size)
        self.dead.add(a)

    @precondition(lambda self: bool(self.dead))
    @rule(data=st.data())
    def unmap_again_is_misuse(self, data: st.DataObject) -> None:
        a = data.draw(st.sampled_from(sorted(self.dead)))
        try:
            D.dma_unmap_phys(self.s, NIC, a, 1)
        except DmaApiMisuse:
            return
        raise AssertionError("a dead mapping was unmapped without complaint")

    @invariant()
    def translations(self) -> None:
        covered: set[int] = set()
        for a, (phys, size) in self.live.items():
            for off in (0, size - 1):
                assert D.translate(self.s, NIC, a + off) == (phys + off, False)
            covered.update(range(a >> 12, ((a + size - 1) >> 12) + 1))
        for a in self.dead:
            if a >> 12 not in covered:
                try:
                    D.translate(self.s, NIC, a)
                except IommuFault:
                    continue
                raise AssertionError(f"unmapped {a:#x} still translates")


TestPool = PoolMachine.TestCase
TestPool.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestIommu = IommuMachine.TestCase
TestIommu.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
