"""Hypothesis throws random arguments at every public entry point of the provider, page and DMA
layers, in random order: only P2pdmaError (carrying an errno) may come out."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdma.errors import P2pdmaError
from p2pdma.model import dma as D
from p2pdma.model import pages as G
from p2pdma.model import provider as P
from p2pdma.model.system import System
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import FAR, GPU, NIC, NVME, model_spec

TOPO = parse_spec(model_spec()).topology()
BDFS = st.sampled_from([GPU, NIC, NVME, FAR, "0000:00:00.0", "0000:02:01.0", "0000:ee:00.0", "garbage", ""])
INTS = st.one_of(st.integers(-(1 << 66), 1 << 66), st.integers(-8, 1 << 14), st.sampled_from([0, 4096, 1 << 20]))
SMALL = st.integers(-3, 9)


def ops(s: System, state: D.DmaIovaState, handles: list[Any]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    prov = st.sampled_from(handles) if handles else st.none()
    return {
        "bind": (s.bind, (BDFS, st.text(max_size=5))),
        "unbind": (s.unbind, (BDFS,)),
        "unplug": (s.unplug, (BDFS,)),
        "set_dma_mask": (s.set_dma_mask, (BDFS, st.integers(-5, 80))),
        "init": (lambda b: P.pcim_p2pdma_init(s, b), (BDFS,)),
        "provider": (lambda b, bar: handles.append(P.pcim_p2pdma_provider(s, b, bar)), (BDFS, SMALL)),
        "map_type": (lambda p, c: p and P.pci_p2pdma_map_type(s, p, c), (prov, BDFS)),
        "bus_addr": (lambda p, a: p and P.pci_p2pdma_bus_addr_map(s, p, a), (prov, INTS)),
        "add_resource": (lambda b, bar, n, o: G.pci_p2pdma_add_resource(s, b, bar, n, o), (BDFS, SMALL, INTS, INTS)),
        "alloc": (lambda b, n: G.pci_alloc_p2pmem(s, b, n), (BDFS, INTS)),
        "free": (lambda b, v, n: G.pci_free_p2pmem(s, b, v, n), (BDFS, INTS, INTS)),
        "virt_to_bus": (lambda b, v: G.pci_p2pmem_virt_to_bus(s, b, v), (BDFS, INTS)),
        "sgl": (lambda b, n: G.pci_p2pmem_alloc_sgl(s, b, n), (BDFS, INTS)),
        "publish": (lambda b, f: G.pci_p2pmem_publish(s, b, f), (BDFS, st.booleans())),
        "find": (lambda cs: G.pci_p2pmem_find_many(s, cs), (st.lists(BDFS, max_size=3),)),
        "sysfs": (lambda b: G.sysfs_p2pmem(s, b), (BDFS,)),
        "mmap": (lambda b, n, sh, off: G.p2pmem_alloc_mmap(s, b, n, shared=sh, pgoff=off),
                 (BDFS, INTS, st.booleans(), SMALL)),
        "munmap": (lambda m: G.p2pmem_munmap(s, m), (INTS,)),
        "map_phys": (lambda b, p, n, d, a: D.dma_map_phys(s, b, p, n, d, a), (BDFS, INTS, INTS, SMALL, INTS)),
        "unmap_phys": (lambda b, p, n, d: D.dma_unmap_phys(s, b, p, n, d), (BDFS, INTS, INTS, SMALL)),
        "translate": (lambda b, a: D.translate(s, b, a), (BDFS, INTS)),
        "iova_alloc": (lambda b, p, n: D.dma_iova_try_alloc(s, b, state, p, n), (BDFS, INTS, INTS)),
        "iova_link": (lambda b, p, o, n: D.dma_iova_link(s, b, state, p, o, n), (BDFS, INTS, INTS, INTS)),
        "iova_sync": (lambda b, o, n: D.dma_iova_sync(s, b, state, o, n), (BDFS, INTS, INTS)),
        "iova_unlink": (lambda b, o, n: D.dma_iova_unlink(s, b, state, o, n), (BDFS, INTS, INTS)),
        "iova_free": (lambda b: D.dma_iova_free(s, b, state), (BDFS,)),
        "iova_destroy": (lambda b, n: D.dma_iova_destroy(s, b, state, n), (BDFS, INTS)),
        "map_p2p": (lambda b, p, a, n: p and D.dma_map_p2p(s, b, p, a, n), (BDFS, prov, INTS, INTS)),
    }


NAMES = sorted(ops(System(TOPO), D.DmaIovaState(), []).keys())


FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_only_kernel_errors_escape(data: st.DataObject) -> None:
    s = System(TOPO, seed=0)
    for b in (GPU, NIC):
        s.bind(b, "drv")
    G.pci_p2pdma_add_resource(s, GPU, 1, 2 << 20)
    state = D.DmaIovaState()
    handles: list[Any] = [P.pcim_p2pdma_provider(s, GPU, 1)]
    for _ in range(data.draw(st.integers(1, 25))):
        table = ops(s, state, [h for h in handles if h is not None])
        name = data.draw(st.sampled_from(NAMES))
        fn, arg_strats = table[name]
        args = [data.draw(a) for a in arg_strats]
        try:
            fn(*args)
        except P2pdmaError as exc:
            assert isinstance(exc.errno, int) and exc.errno > 0 and str(exc)
