"""Revoke of vfio dma-bufs from each trigger (decode-off, reset, close) with 0, 1 and many
importers, with and without DMA in flight; un-revoke; close is permanent; each broken importer
and the no-wait exporter caught; data intact across revoke and un-revoke."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from p2pdma.errors import IommuFault, KernelError, P2pdmaError
from p2pdma.model import dmabuf as B
from p2pdma.model import fabric as F
from p2pdma.model import importers as I
from p2pdma.model import vfio as V
from p2pdma.model.scenario import pattern_bytes
from p2pdma.model.system import System
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import FAR, GPU, NIC, NVME, model_spec

TOPO = parse_spec(model_spec()).topology()
SIZE = 64 << 10
DATA = pattern_bytes(1, SIZE)
IMPORTERS = [("rdma", NIC), ("nvme", NVME), ("iommufd", FAR)]
TRIGGERS: dict[str, Callable[[System], bool]] = {
    "decode-off": lambda s: V.vfio_set_memory(s, GPU, False),
    "reset": lambda s: V.vfio_reset(s, GPU),
    "close": lambda s: V.vfio_close(s, GPU),
}
AFTER = {"decode-off": V.DmaBufStatus.TEMP_REVOKED, "reset": V.DmaBufStatus.OK, "close": V.DmaBufStatus.PERM_REVOKED}
DECODES_AFTER = {"decode-off": False, "reset": True, "close": False}


def setup(n: int, kinds: list[tuple[str, str]] = IMPORTERS, *, wait: bool = True) -> tuple[System, int, list[int]]:
    s = System(TOPO, seed=1)
    V.vfio_open(s, GPU, wait_for_fences=wait)
    for bdf in (NIC, NVME, FAR):
        s.bind(bdf, "drv")
        s.set_dma_mask(bdf, 64)
    F.cpu_write(s, GPU, 1, 0, DATA)
    buf = V.vfio_device_feature(s, GPU, V.dma_buf_request(1, [(0, SIZE)]))
    imps = [I.import_buffer(s, kind, dev, buf) for kind, dev in kinds[:n]]
    return s, buf, imps


def notified(s: System) -> int:
    return sum(1 for h in s.history if h.startswith("move_notify"))


def dma(s: System, imp: int, off: int = 0, n: int = SIZE, data: bytes | None = None) -> bytes:
    op = I.start_dma(s, imp, off, n, write=data is not None, data=data)
    return I.finish_dma(s, op)


def refused(s: System, imp: int) -> int:
    """The errno a new DMA gets (EFAULT for the VM's IOMMU fault)."""
    with pytest.raises(P2pdmaError) as ei:
        dma(s, imp, 0, 4096)
    assert isinstance(ei.value, (KernelError, IommuFault))
    return ei.value.errno


def kind_of(s: System, imp: int) -> str:
    return I.state(s).imports[imp].kind


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_revoke_without_dma_in_flight(trigger: str, n: int) -> None:
    s, buf, imps = setup(n)
    assert TRIGGERS[trigger](s) is True  # nothing to wait for
    assert V.buffer_status(s, buf) == AFTER[trigger]
    # move_notify once per importer and transition: a reset revokes, then restores the buffers,
    # and vfio_pci_dma_buf_move() notifies on both
    assert notified(s) == (2 * n if trigger == "reset" else n)
    for imp in imps:
        att = B.get_att(s, I.state(s).imports[imp].att)
        assert att.invalidated and att.sgt is None and not I.state(s).imports[imp].mapped
    assert V.bar_accessible(s, GPU) is DECODES_AFTER[trigger]
    assert s.violations == [] and not s.ext.get("events")
    for imp in imps:
        if trigger == "reset" and kind_of(s, imp) != "iommufd":
            assert dma(s, imp) == DATA  # rdma / nvme map again on their next use
        else:
            assert refused(s, imp) == (errno.EFAULT if kind_of(s, imp) == "iommufd" else errno.ENODEV)
    if trigger == "reset" and n == 3:
        I.remap(s, imps[2])  # the VMM maps the buffer into the guest again
        assert dma(s, imps[2]) == DATA
    assert s.violations == []


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_revoke_waits_for_dma_in_flight(trigger: str, n: int) -> None:
    s, buf, imps = setup(n)
    ops = [I.start_dma(s, imp, 0, SIZE, write=False) for imp in imps]
    assert TRIGGERS[trigger](s) is False  # waits for the fences
    assert V.buffer_status(s, buf) != V.DmaBufStatus.OK  # revoked at once ...
    assert V.bar_accessible(s, GPU) and not V.revoke_done(s, GPU)  # ... the BAR stays until the wait ends
    assert refused(s, imps[0]) == errno.EAGAIN  # rdma drains before it maps again
    results = []
    for k, op in enumerate(ops):
        results.append(I.finish_dma(s, op))
        assert V.revoke_done(s, GPU) is (k == len(ops) - 1)
    for imp, got in zip(imps, results, strict=True):
        # the VM's mapping went at once (iopt_revoke_notify()): its read faulted; the others completed
        assert got == (b"" if kind_of(s, imp) == "iommufd" else DATA)
    assert V.buffer_status(s, buf) == AFTER[trigger]
    assert V.bar_accessible(s, GPU) is DECODES_AFTER[trigger]
    assert all(B.get_att(s, I.state(s).imports[i].att).sgt is None for i in imps)  # drained, unmapped
    assert s.violations == [] and not s.ext.get("events")


def test_unrevoke_decode_back_on_maps_again() -> None:
    s, buf, imps = setup(3)
    assert V.vfio_set_memory(s, GPU, False)
    assert V.vfio_set_memory(s, GPU, True)
    assert V.buffer_status(s, buf) == V.DmaBufStatus.OK and V.bar_accessible(s, GPU)
    assert dma(s, imps[0]) == DATA and dma(s, imps[1]) == DATA
    assert refused(s, imps[2]) == errno.EFAULT  # until its VMM maps again
    I.remap(s, imps[2])
    assert dma(s, imps[2]) == DATA
    late = I.import_buffer(s, "rdma", NIC, buf)  # a new importer may attach again
    assert dma(s, late, 4096, 4096) == DATA[4096:8192]
    assert s.violations == []


def test_reset_with_decode_off_stays_revoked() -> None:
    s, buf, imps = setup(1)
    assert V.vfio_set_memory(s, GPU, False)
    assert V.vfio_reset(s, GPU)
    assert V.buffer_status(s, buf) == V.DmaBufStatus.TEMP_REVOKED
    assert refused(s, imps[0]) == errno.ENODEV
    assert V.vfio_set_memory(s, GPU, True)
    assert dma(s, imps[0]) == DATA


def test_close_is_permanent() -> None:
    s, buf, imps = setup(1)
    assert V.vfio_close(s, GPU)
    V.vfio_open(s, GPU)  # opened again: the old buffer stays revoked for good
    assert V.vfio_set_memory(s, GPU, True)
    assert V.buffer_status(s, buf) == V.DmaBufStatus.PERM_REVOKED
    with pytest.raises(KernelError) as ei:
        I.remap(s, imps[0])
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(KernelError) as ei:
        B.dma_buf_dynamic_attach(s, buf, NVME, "rdma")
    assert ei.value.errno == errno.ENODEV
    fresh = V.vfio_device_feature(s, GPU, V.dma_buf_request(1, [(0, SIZE)]))
    assert dma(s, I.import_buffer(s, "nvme", NVME, fresh)) == DATA
    assert s.violations == []


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_importer_that_ignores_invalidate_is_caught(trigger: str) -> None:
    s, buf, imps = setup(1, [("ignores-invalidate", NIC)])
    assert TRIGGERS[trigger](s)
    moved = dict(F.state(s).bytes_by_path)
    got = dma(s, imps[0])  # through the mapping move_notify invalidated
    assert got == b"" and F.state(s).bytes_by_path == moved  # the access was not performed
    assert [v.kind for v in s.violations] == ["sanitizer"]
    assert "invalidated" in s.violations[0].message


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_importer_that_does_not_fence_is_caught(trigger: str) -> None:
    s, buf, imps = setup(1, [("dma-past-invalidate", NIC)])
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert TRIGGERS[trigger](s) is True  # no fence: nobody waits for the DMA in flight
    I.finish_dma(s, op)
    assert [v.kind for v in s.violations] == ["sanitizer"]
    assert "without waiting" in s.violations[0].message


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_exporter_that_does_not_wait_is_caught(trigger: str) -> None:
    s, buf, imps = setup(1, wait=False)
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert TRIGGERS[trigger](s) is True
    assert [e[0] for e in s.ext["events"]] == ["revoke-early"]
    I.finish_dma(s, op)
    assert [v.kind for v in s.violations] == ["sanitizer"]


def test_correct_importers_across_every_trigger_have_no_violation() -> None:
    s, buf, imps = setup(2)
    for trigger in ("decode-off", "reset"):
        ops = [I.start_dma(s, imp, 0, 4096, write=False) for imp in imps]
        TRIGGERS[trigger](s)
        for op in ops:
            I.finish_dma(s, op)
        if trigger == "decode-off":
            assert V.vfio_set_memory(s, GPU, True)
    assert V.vfio_close(s, GPU)
    assert s.violations == [] and not s.ext.get("events")


def test_data_intact_across_revoke_and_unrevoke() -> None:
    s, buf, imps = setup(3)
    rdma, nvme, vm = imps
    w1, w2 = pattern_bytes(2, 8192), pattern_bytes(3, 4096)
    dma(s, rdma, 4096, 8192, w1)  # BUS_ADDR write
    dma(s, vm, 32768, 4096, w2)  # THRU_HOST_BRIDGE write
    want = bytearray(DATA)
    want[4096:12288] = w1
    want[32768:36864] = w2
    assert V.vfio_set_memory(s, GPU, False)
    assert V.vfio_set_memory(s, GPU, True)
    assert dma(s, nvme) == bytes(want)
    assert V.vfio_reset(s, GPU)
    I.remap(s, vm)
    assert dma(s, vm) == bytes(want) == dma(s, rdma)
    assert F.cpu_read(s, GPU, 1, 0, SIZE) == bytes(want)
    assert s.violations == []
    assert F.state(s).bytes_by_path["BUS_ADDR"] > 0 and F.state(s).bytes_by_path["THRU_HOST_BRIDGE"] > 0


def test_unplug_of_the_exporter_revokes_and_waits_before_the_provider_goes() -> None:
    s, buf, imps = setup(1)
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert V.vfio_unplug(s, GPU) is False  # vfio's remove: close, revoke, wait
    assert notified(s) == 1 and s.present(GPU)
    assert (GPU, 1) not in s.ext.get("released_bars", set())
    assert I.finish_dma(s, op) == DATA  # the last fence: close completes, the driver unbinds
    assert not s.present(GPU) and (GPU, 1) in s.ext["released_bars"]
    assert V.buffer_status(s, buf) == V.DmaBufStatus.PERM_REVOKED
    assert refused(s, imps[0]) == errno.ENODEV
    assert s.violations == []


def test_surprise_unplug_of_the_importer_is_flagged_by_the_fabric() -> None:
    s, buf, imps = setup(1)
    op = I.start_dma(s, imps[0], 0, 4096, write=False)
    s.unplug(NIC)
    assert I.finish_dma(s, op) == b""
    assert [v.kind for v in s.violations] == ["sanitizer"] and "unplugged" in s.violations[0].message
