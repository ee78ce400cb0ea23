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
IMPORTERS = [("rdma", NIC), ("nvme-hypothetical", NVME), ("iommufd", FAR)]
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
    """7.2 (vfio_pci_dmabuf.c:vfio_pci_dma_buf_move(): kref_put() then wait_for_completion()): the
    revoke stays blocked while the importer keeps its mapping; its DMA through the invalidated
    mapping is the sanitizer's; only its unmap (here: release) lets the revoke complete."""
    s, buf, imps = setup(1, [("ignores-invalidate", NIC)])
    assert TRIGGERS[trigger](s) is False  # blocked in the ioctl / config write
    v = V._st(s).devices[GPU]
    assert not V.revoke_done(s, GPU) and v.busy is not None and v.busy.phase == "unmaps"
    assert B.get_buf(s, buf).priv.kref == 1  # the creation reference dropped, one mapping left
    moved = dict(F.state(s).bytes_by_path)
    got = dma(s, imps[0])  # through the mapping the invalidation revoked
    assert got == b"" and F.state(s).bytes_by_path == moved  # the access was not performed
    assert [v.kind for v in s.violations] == ["sanitizer"]
    assert "invalidated" in s.violations[0].message
    I.release(s, imps[0])  # its unmap drops the last kref: complete()
    assert V.revoke_done(s, GPU) and V.buffer_status(s, buf) == AFTER[trigger]


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_importer_that_never_unmaps_blocks_the_revoke_forever(trigger: str) -> None:
    s, buf, imps = setup(1, [("never-unmaps", NIC)])
    assert TRIGGERS[trigger](s) is False
    with pytest.raises(KernelError) as ei:
        I.release(s, imps[0])
    assert ei.value.errno == errno.EBUSY
    assert not V.revoke_done(s, GPU) and V._st(s).devices[GPU].busy.waiting == f"unmaps of dma-buf {buf}"
    # every later memory_lock user queues behind it: the next export blocks too
    later = V.uapi_feature(s, GPU, V.dma_buf_request(1, [(0, 4096)]))
    assert later.blocked and later.errno == 0 and V.uapi_result(s, GPU, later.ticket or 0) is None


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_importer_that_does_not_fence_is_covered_by_the_kref_wait(trigger: str) -> None:
    """An importer that fences nothing but unmaps once its DMA drained: 7.2's completion wait
    (vfio_pci_dmabuf.c:vfio_pci_dma_buf_move()) holds the revoke until the unmap, so the DMA in
    flight finishes before the BAR goes (6.19's fence-only wait let it through)."""
    s, buf, imps = setup(1, [("dma-past-invalidate", NIC)])
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert TRIGGERS[trigger](s) is False  # no fence, but the mapping is still there
    assert I.finish_dma(s, op) == DATA  # drained: the importer unmaps, the revoke completes
    assert V.revoke_done(s, GPU) and s.violations == []


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_exporter_that_does_not_wait_is_caught(trigger: str) -> None:
    s, buf, imps = setup(1, wait=False)
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert TRIGGERS[trigger](s) is True
    # a reset also un-revokes at once, with the DMA's fence still unsignalled
    assert [e[0] for e in s.ext["events"]] == ["revoke-early"] + (["unrevoke-early"] if trigger == "reset" else [])
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
    """vfio_main.c:vfio_unregister_group_dev() (7.2): remove sleeps while the device is open and
    asks the user (request notifier); the user's close revokes and waits; then the unbind goes."""
    s, buf, imps = setup(1)
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert V.vfio_unplug(s, GPU) is False  # waits for the user to close the device
    assert notified(s) == 0 and s.present(GPU) and V.unbind_waits(s, GPU)
    assert V._st(s).devices[GPU].unbind_requested == 1
    # the open fd still holds a registration reference (vfio_device_try_get_registration() is
    # refcount_inc_not_zero()): exports go on while the unbind sleeps, as the running 7.2 kernel shows
    late = V.vfio_device_feature(s, GPU, V.dma_buf_request(1, [(0, 4096)]))
    assert V.buffer_status(s, late) == V.DmaBufStatus.OK
    assert V.vfio_close(s, GPU) is False  # the user closes: cleanup revokes, waits for the DMA
    assert notified(s) == 1 and s.present(GPU)
    assert (GPU, 1) not in s.ext.get("released_bars", set())
    assert I.finish_dma(s, op) == DATA  # the last fence and unmap: close completes, the driver unbinds
    assert not s.present(GPU) and (GPU, 1) in s.ext["released_bars"]
    assert V.buffer_status(s, buf) == V.DmaBufStatus.PERM_REVOKED
    assert V.buffer_status(s, late) == V.DmaBufStatus.PERM_REVOKED  # the late export went with the close
    assert refused(s, imps[0]) == errno.ENODEV
    assert s.violations == []


def test_surprise_unplug_of_the_importer_is_flagged_by_the_fabric() -> None:
    s, buf, imps = setup(1)
    op = I.start_dma(s, imps[0], 0, 4096, write=False)
    s.unplug(NIC)
    assert I.finish_dma(s, op) == b""
    assert [v.kind for v in s.violations] == ["sanitizer"] and "unplugged" in s.violations[0].message


def test_export_during_a_pending_revoke_waits_and_starts_revoked() -> None:
    """vfio_pci_dmabuf.c:vfio_pci_core_feature_dma_buf() takes memory_lock for the list and the
    revoked bit: an export issued while a decode-off revoke waits sleeps behind it and is born
    revoked (memory decode is off by then)."""
    s, buf, imps = setup(1)
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    assert V.vfio_set_memory(s, GPU, False) is False
    ans = V.uapi_feature(s, GPU, V.dma_buf_request(1, [(0, 8192)]))
    assert ans.blocked and ans.ticket is not None and V.uapi_result(s, GPU, ans.ticket) is None
    I.finish_dma(s, op)
    done = V.uapi_result(s, GPU, ans.ticket)
    assert done is not None and done.errno == 0 and done.size == 8192
    assert V.buffer_status(s, done.result) == V.DmaBufStatus.TEMP_REVOKED
    with pytest.raises(KernelError) as ei:
        I.import_buffer(s, "rdma", NIC, done.result)
    assert ei.value.errno == errno.ENODEV  # vfio_pci_dma_buf_attach(): revoked
    assert V.vfio_set_memory(s, GPU, True) and V.buffer_status(s, done.result) == V.DmaBufStatus.OK


def _fence(s: System, buf: int) -> int:
    B.dma_resv_lock(s, buf, "vgem")
    f = B.dma_resv_add_fence(s, buf, "vgem")
    B.dma_resv_unlock(s, buf, "vgem")
    return f


def test_unrevoke_waits_for_fences_before_clearing_revoked() -> None:
    """vfio_pci_dmabuf.c:vfio_pci_dma_buf_move(vdev, false) runs dma_resv_wait_timeout() before it
    clears revoked: decode-on sleeps while a fence on the buffer is unsignalled."""
    s, buf, imps = setup(0)
    assert V.vfio_set_memory(s, GPU, False)
    f = _fence(s, buf)
    assert V.vfio_set_memory(s, GPU, True) is False
    assert V.buffer_status(s, buf) == V.DmaBufStatus.TEMP_REVOKED and not V.revoke_done(s, GPU)
    B.dma_fence_signal(s, buf, f)
    assert V.revoke_done(s, GPU) and V.buffer_status(s, buf) == V.DmaBufStatus.OK


def test_add_fence_without_the_lock_is_a_locking_violation() -> None:
    s, buf, _ = setup(0)
    B.dma_resv_add_fence(s, buf, "careless")
    assert [v.kind for v in s.violations] == ["locking"] and "dma_resv_add_fence" in s.violations[0].message


def test_resv_lock_held_elsewhere_sleeps_not_ebusy() -> None:
    """dma-resv.c:dma_resv_lock() is a ww_mutex: a second context sleeps (never EBUSY)."""
    s, buf, _ = setup(0)
    B.dma_resv_lock(s, buf, "a")
    with pytest.raises(B.ResvWouldBlock) as ei:
        B.dma_resv_lock(s, buf, "b")
    assert ei.value.errno != errno.EBUSY
    B.dma_resv_unlock(s, buf, "a")
    B.dma_resv_lock(s, buf, "b")


@pytest.mark.parametrize("how", ["d3hot", "flr-pcie", "flr-af", "pm-entry", "hot-reset"])
def test_more_revoke_triggers(how: str) -> None:
    """vfio_pci_config.c: vfio_pci_set_power_state() to D3hot, vfio_exp_config_write() /
    vfio_af_config_write() FLR; vfio_pci_core.c: vfio_pci_runtime_pm_entry(),
    vfio_pci_dev_set_hot_reset(): each revokes and waits for the DMA in flight."""
    s, buf, imps = setup(1)
    op = I.start_dma(s, imps[0], 0, SIZE, write=False)
    go = {"d3hot": lambda: V.vfio_set_power(s, GPU, "D3hot"), "flr-pcie": lambda: V.vfio_flr(s, GPU, "pcie"),
          "flr-af": lambda: V.vfio_flr(s, GPU, "af"), "hot-reset": lambda: V.vfio_hot_reset(s, GPU),
          "pm-entry": lambda: V.uapi_feature(s, GPU, V.feature_request(
              V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, V.VFIO_DEVICE_FEATURE_SET)).blocked is False}
    assert go[how]() is False
    assert notified(s) == 1 and not V.revoke_done(s, GPU)
    assert I.finish_dma(s, op) == DATA
    assert V.revoke_done(s, GPU) and s.violations == []
    resets = V._st(s).devices[GPU].resets
    if how in ("flr-pcie", "flr-af", "hot-reset"):
        assert resets == 1 and V.buffer_status(s, buf) == V.DmaBufStatus.OK  # restored: decode was on
    else:
        assert resets == 0 and V.buffer_status(s, buf) == V.DmaBufStatus.TEMP_REVOKED
    if how == "d3hot":
        assert not V.bar_accessible(s, GPU)
        assert V.vfio_set_power(s, GPU, "D0") and V.buffer_status(s, buf) == V.DmaBufStatus.OK


def test_hot_reset_revokes_every_open_device_of_the_dev_set() -> None:
    s = System(TOPO, seed=1)
    V.vfio_open(s, GPU, dev_set=(GPU, FAR))
    V.vfio_open(s, FAR)
    s.bind(NIC, "drv")
    s.set_dma_mask(NIC, 64)
    bufs = [V.vfio_device_feature(s, d, V.dma_buf_request(1 if d == GPU else 0, [(0, 4096)])) for d in (GPU, FAR)]
    imp = I.import_buffer(s, "rdma", NIC, bufs[1])
    assert V.vfio_hot_reset(s, GPU) is True
    assert notified(s) == 2  # FAR's buffer: revoked and restored
    assert [V._st(s).devices[d].resets for d in (GPU, FAR)] == [1, 1]
    assert dma(s, imp, 0, 4096) == F.cpu_read(s, FAR, 0, 0, 4096) and s.violations == []


def test_multi_range_buffer_through_the_iommu_is_the_kernels_defect() -> None:
    """dma-buf-mapping.c:dma_buf_phys_vec_to_sgt() (7.2) links every range at IOVA offset 0: the
    second link lands on the first. The model mirrors it and names the finding."""
    s, _, _ = setup(0)
    buf = V.vfio_device_feature(s, GPU, V.dma_buf_request(1, [(0, 4096), (8192, 4096)]))
    with pytest.raises(KernelError) as ei:
        I.import_buffer(s, "rdma", FAR, buf)  # THRU_HOST_BRIDGE with an IOVA range
    assert ei.value.errno == errno.EADDRINUSE  # iommu_pt.h: an IOVA already mapped
    assert [f[0] for f in s.ext["findings"]] == [V.FINDING_MULTI_RANGE]
    ok = I.import_buffer(s, "rdma", NIC, buf)  # BUS_ADDR: no IOVA, both ranges map
    assert dma(s, ok, 0, 8192) == DATA[:4096] + DATA[8192:12288]
    with pytest.raises(KernelError) as ei:  # iommufd's private interconnect: one range only
        I.import_buffer(s, "iommufd", FAR, buf)
    assert ei.value.errno == errno.EOPNOTSUPP


def test_import_sync_file_fence_holds_a_revoke() -> None:
    """dma-buf.c:dma_buf_import_sync_file(): a vgem fence joins the reservation (WRITE usage);
    vfio_pci_dma_buf_move() waits for it (BOOKKEEP covers every usage); bad flags are EINVAL."""
    s, buf, _ = setup(0)
    with pytest.raises(KernelError) as ei:
        B.dma_buf_import_sync_file(s, buf, 0)
    assert ei.value.errno == errno.EINVAL
    f = B.dma_buf_import_sync_file(s, buf, B.DMA_BUF_SYNC_WRITE)
    assert V.vfio_reset(s, GPU) is False
    B.dma_fence_signal(s, buf, f)
    assert V.revoke_done(s, GPU) and V.buffer_status(s, buf) == V.DmaBufStatus.OK and s.violations == []
