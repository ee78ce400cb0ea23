"""vfio-pci's VFIO_DEVICE_FEATURE_DMA_BUF: every uAPI check with the kernel's errno, the checks'
order against a reference written from the kernel's C, a fuzzer on the ioctl bytes, and the
exporter's dma-buf ops (attach, pin, map under the reservation lock)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdma.errors import KernelError
from p2pdma.model import dmabuf as B
from p2pdma.model import vfio as V
from p2pdma.model.system import System
from p2pdma.sources.spec import parse_spec
from tests.model.conftest import FAR, GPU, NIC, NVME, model_spec

TOPO = parse_spec(model_spec()).topology()
GET, SET, PROBE = V.VFIO_DEVICE_FEATURE_GET, V.VFIO_DEVICE_FEATURE_SET, V.VFIO_DEVICE_FEATURE_PROBE
DMA_BUF = V.VFIO_DEVICE_FEATURE_DMA_BUF
BAR1 = next(b for b in TOPO[GPU].bars if b.index == 1)  # 1 GiB, 64-bit prefetchable
G1 = 1 << 30
U64 = 1 << 64
KERNEL_ERRNOS = {errno.EFAULT, errno.EINVAL, errno.ENODEV, errno.ENOTTY, errno.ENOMEM, errno.EOVERFLOW, errno.EBADF}
IMP = "test-importer"  # a dynamic importer whose move_notify only counts


def _count_notify(system: System, att: B.Attachment) -> None:
    system.ext.setdefault("test-notified", []).append(att.id)


B.IMPORTERS[IMP] = _count_notify


def opened() -> System:
    s = System(TOPO, seed=1)
    V.vfio_open(s, GPU)
    for bdf in (NIC, NVME, FAR):
        s.bind(bdf, "drv")
        s.set_dma_mask(bdf, 64)
    return s


@pytest.fixture
def vsys() -> System:
    return opened()


def req(region: int = 1, ranges: list[tuple[int, int]] | None = None, **kw: int) -> bytes:
    return V.dma_buf_request(region, [(0, 4096)] if ranges is None else ranges, **kw)


def hdr(argsz: int, flags: int) -> bytes:
    return V.FEATURE_HDR.pack(argsz, flags)


def body(region: int, nr: int, ranges: list[tuple[int, int]] = (), req_flags: int = 0) -> bytes:  # type: ignore[assignment]
    return V.DMA_BUF_HDR.pack(region, 0, req_flags, nr) + b"".join(V.DMA_RANGE.pack(o, n) for o, n in ranges)


def errno_of(s: System, arg: bytes) -> int:
    with pytest.raises(KernelError) as ei:
        V.vfio_device_feature(s, GPU, arg)
    return ei.value.errno


GOOD = GET | DMA_BUF
CASES: list[tuple[str, bytes, int]] = [
    # the feature header (vfio_ioctl_device_feature())
    ("header shorter than 8 bytes", b"\x10\x00\x00\x00\x01\x00\x02", errno.EFAULT),
    ("empty buffer", b"", errno.EFAULT),
    ("argsz below the header", hdr(7, GOOD) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("unknown flag bit 19", hdr(40, GOOD | 1 << 19) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("unknown flag bit 31", hdr(40, GOOD | 1 << 31) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("GET and SET without PROBE", hdr(40, GET | SET | DMA_BUF) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    # other features, answered by vfio core or vfio-pci themselves (7.2), not ENOTTY for all:
    # vfio_main.c:vfio_ioctl_device_feature_migration(): !device->mig_ops -> ENOTTY
    ("another feature: migration", hdr(40, GET | 1) + body(1, 1, [(0, 4096)]), errno.ENOTTY),
    # vfio_main.c:vfio_ioctl_device_feature_mig_device_state(): !device->mig_ops -> ENOTTY
    ("MIG_DEVICE_STATE", hdr(40, SET | 2), errno.ENOTTY),
    # vfio_main.c:vfio_ioctl_device_feature_logging_start/stop/report(): !device->log_ops -> ENOTTY
    ("DMA_LOGGING_START", hdr(40, SET | 6), errno.ENOTTY),
    ("DMA_LOGGING_REPORT", hdr(40, GET | 8), errno.ENOTTY),
    # vfio_main.c:vfio_ioctl_device_feature_migration_data_size(): !device->mig_ops -> ENOTTY
    ("MIG_DATA_SIZE", hdr(40, GET | 9), errno.ENOTTY),
    # vfio_main.c:vfio_ioctl_device_feature_migration_precopy_info_v2(): no PRE_COPY -> EINVAL, even PROBE
    ("MIG_PRECOPY_INFOv2 (12)", hdr(40, GET | 12) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("MIG_PRECOPY_INFOv2 PROBE", hdr(8, PROBE | SET | 12), errno.EINVAL),
    # vfio_pci_core.c:vfio_pci_core_pm_entry(): vfio_check_feature(SET, 0): GET refused
    ("LOW_POWER_ENTRY GET", hdr(8, GET | 3), errno.EINVAL),
    ("LOW_POWER_ENTRY neither GET nor SET", hdr(8, 3), errno.EINVAL),
    # vfio_pci_core.c:vfio_pci_core_pm_exit(): vfio_check_feature(SET, 0)
    ("LOW_POWER_EXIT GET", hdr(8, GET | 5), errno.EINVAL),
    # vfio_pci_core.c:vfio_pci_core_pm_entry_with_wakeup(): argsz < 4, then a negative eventfd
    ("LOW_POWER_ENTRY_WITH_WAKEUP short", hdr(8, SET | 4), errno.EINVAL),
    ("LOW_POWER_ENTRY_WITH_WAKEUP fd -1", hdr(12, SET | 4) + struct.pack("<i", -1), errno.EINVAL),
    # struct vfio_device_low_power_entry_with_wakeup is 8 bytes (wakeup_eventfd + reserved): the minsz
    # of vfio_pci_core_pm_entry_with_wakeup() (7.2), as the running kernel answers
    ("LOW_POWER_ENTRY_WITH_WAKEUP 4-byte payload", hdr(12, SET | 4) + struct.pack("<i", 7), errno.EINVAL),
    ("LOW_POWER_ENTRY_WITH_WAKEUP not an eventfd", hdr(16, SET | 4) + struct.pack("<iI", 7, 0), errno.EBADF),
    # vfio_pci_core.c:vfio_pci_core_feature_token(): no vf_token (not an SR-IOV PF) -> ENOTTY
    ("PCI_VF_TOKEN (0)", hdr(24, SET | 0) + bytes(16), errno.ENOTTY),
    # vfio_pci_core.c:vfio_pci_core_ioctl_feature() default: BUS_MASTER (10) and unknown -> ENOTTY
    ("BUS_MASTER (10)", hdr(8, SET | 10), errno.ENOTTY),
    ("another feature: 0xffff", hdr(40, GET | 0xFFFF) + body(1, 1, [(0, 4096)]), errno.ENOTTY),
    # vfio_check_feature(): only GET is supported
    ("SET is not supported", hdr(40, SET | DMA_BUF) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("PROBE of SET is not supported", hdr(40, PROBE | SET | DMA_BUF) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("neither GET nor SET", hdr(40, DMA_BUF) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    ("argsz below the dma_buf struct", hdr(8 + 15, GOOD) + body(1, 1, [(0, 4096)]), errno.EINVAL),
    # copy_from_user() of the dma_buf struct, then its fields
    ("dma_buf struct not readable", hdr(40, GOOD) + body(1, 1)[:15], errno.EFAULT),
    ("nr_ranges 0", hdr(40, GOOD) + body(1, 0, [(0, 4096)]), errno.EINVAL),
    ("request flags", hdr(40, GOOD) + body(1, 1, [(0, 4096)], req_flags=1), errno.EINVAL),
    ("request flags high", hdr(40, GOOD) + body(1, 1, [(0, 4096)], req_flags=1 << 31), errno.EINVAL),
    ("region 6 (ROM)", hdr(40, GOOD) + body(6, 1, [(0, 4096)]), errno.ENODEV),
    ("region 7", hdr(40, GOOD) + body(7, 1, [(0, 4096)]), errno.ENODEV),
    ("region 0xffffffff", hdr(40, GOOD) + body(0xFFFFFFFF, 1, [(0, 4096)]), errno.ENODEV),
    # memdup_array_user(): too many ranges for kmalloc, then ranges past the caller's buffer
    ("262145 ranges", hdr(40, GOOD) + body(1, 262145), errno.ENOMEM),
    ("2**32-1 ranges", hdr(40, GOOD) + body(1, 0xFFFFFFFF), errno.ENOMEM),
    ("262144 ranges fit kmalloc but are not there", hdr(40, GOOD) + body(1, 262144), errno.EFAULT),
    ("second range missing", hdr(56, GOOD) + body(1, 2, [(0, 4096)]), errno.EFAULT),
    ("range cut short", (hdr(40, GOOD) + body(1, 1, [(0, 4096)]))[:-1], errno.EFAULT),
    # validate_dmabuf_input()
    ("zero-length range", req(ranges=[(0, 0)]), errno.EINVAL),
    ("unaligned offset", req(ranges=[(100, 4096)]), errno.EINVAL),
    ("unaligned length", req(ranges=[(0, 4097)]), errno.EINVAL),
    ("second range unaligned", req(ranges=[(0, 4096), (4096, 10)]), errno.EINVAL),
    ("total length overflows u64", req(ranges=[(0, 1 << 63), (0, 1 << 63)]), errno.EINVAL),
    ("total length has bit 63 (DMA_IOVA_USE_SWIOTLB)", req(ranges=[(0, 1 << 62), (0, 1 << 62)]), errno.EINVAL),
    # vfio_pci_dmabuf.c:vfio_pci_core_feature_dma_buf(): IS_ERR(vfio_pci_core_get_iomap()) -> ENODEV
    # for a BAR of length 0 (pci_iomap() fails), before memdup_array_user() copies the ranges
    ("absent BAR (upper half of BAR1)", req(region=2), errno.ENODEV),
    ("absent BAR 5", req(region=5), errno.ENODEV),
    ("absent BAR is checked before the ranges are copied", hdr(40, GOOD) + body(5, 262145), errno.ENODEV),
    # vfio_pci_core_get_dmabuf_phys(): pcim_p2pdma_provider() is NULL for an I/O BAR (iomap works)
    ("I/O BAR", req(region=3), errno.EINVAL),
    ("I/O BAR with an overflowing range: provider checked first", req(region=3, ranges=[(U64 - 4096, 4096)]),
     errno.EINVAL),
    # vfio_pci_core_fill_phys_vec()
    ("offset overflows the BAR start", req(ranges=[(U64 - 4096, 4096)]), errno.EOVERFLOW),
    ("offset+length overflows", req(ranges=[(U64 - BAR1.start - 4096, 8192)]), errno.EOVERFLOW),
    ("range ends past the BAR", req(ranges=[(G1 - 4096, 8192)]), errno.EINVAL),
    ("range starts past the BAR", req(ranges=[(G1, 4096)]), errno.EINVAL),
    ("second range past the BAR", req(ranges=[(0, 4096), (G1, 4096)]), errno.EINVAL),
    # the order of the checks
    ("nr_ranges 0 is checked before the region", hdr(40, GOOD) + body(6, 0), errno.EINVAL),
    ("region is checked before the ranges are copied", hdr(40, GOOD) + body(6, 262145), errno.ENODEV),
    ("argsz is checked before the struct is read", hdr(8 + 15, GOOD), errno.EINVAL),
]


@pytest.mark.parametrize(("what", "arg", "want"), CASES, ids=[c[0] for c in CASES])
def test_feature_errno(vsys: System, what: str, arg: bytes, want: int) -> None:
    before = set(B.state(vsys).bufs)
    assert errno_of(vsys, arg) == want, what
    assert set(B.state(vsys).bufs) == before  # a refusal exports nothing


def test_probe_returns_zero_and_exports_nothing(vsys: System) -> None:
    assert V.vfio_device_feature(vsys, GPU, hdr(8, PROBE | GET | DMA_BUF)) == 0
    assert V.vfio_device_feature(vsys, GPU, hdr(8, PROBE | DMA_BUF)) == 0
    # PROBE with GET and SET together passes the core check but SET is not supported
    assert errno_of(vsys, hdr(8, PROBE | GET | SET | DMA_BUF)) == errno.EINVAL
    assert B.state(vsys).bufs == {}


def test_success_size_is_the_sum_of_ranges(vsys: System) -> None:
    ranges = [(0, 4096), (1 << 20, 8192), (G1 - 4096, 4096)]
    buf_id = V.vfio_device_feature(vsys, GPU, req(ranges=ranges))
    buf = B.get_buf(vsys, buf_id)
    assert buf.size == 16384 and buf.exporter == V.EXPORTER
    priv = buf.priv
    assert isinstance(priv, V.VfioPciDmaBuf)
    assert priv.phys_vec == [(BAR1.start + o, n) for o, n in ranges]
    assert priv.region_index == 1 and priv.provider.owner == GPU
    assert V.buffer_status(vsys, buf_id) == V.DmaBufStatus.OK
    # argsz only needs to cover the dma_buf struct: the ranges are read regardless (the kernel does)
    short = req(ranges=[(0, 4096), (4096, 4096)], argsz=8 + 16)
    assert B.get_buf(vsys, V.vfio_device_feature(vsys, GPU, short)).size == 8192
    # open_flags pass through to the file
    assert B.get_buf(vsys, V.vfio_device_feature(vsys, GPU, req(open_flags=0o4000))).file_flags == 0o4000


def test_export_while_decode_off_is_born_revoked(vsys: System) -> None:
    assert V.vfio_set_memory(vsys, GPU, False)
    buf_id = V.vfio_device_feature(vsys, GPU, req())
    assert V.buffer_status(vsys, buf_id) == V.DmaBufStatus.TEMP_REVOKED
    with pytest.raises(KernelError) as ei:
        B.dma_buf_dynamic_attach(vsys, buf_id, NIC, IMP)
    assert ei.value.errno == errno.ENODEV
    assert V.vfio_set_memory(vsys, GPU, True)
    assert V.buffer_status(vsys, buf_id) == V.DmaBufStatus.OK


def test_feature_on_a_device_not_open_is_enodev(vsys: System) -> None:
    with pytest.raises(KernelError) as ei:
        V.vfio_device_feature(vsys, NIC, req())
    assert ei.value.errno == errno.ENODEV
    assert V.vfio_close(vsys, GPU)
    assert errno_of(vsys, req()) == errno.ENODEV


def test_non_mappable_bars_have_no_provider() -> None:
    s = System(TOPO, seed=1)
    s.non_mappable_bars.add(GPU)
    V.vfio_open(s, GPU)  # pcim_p2pdma_init()'s EOPNOTSUPP is tolerated
    assert errno_of(s, req()) == errno.EINVAL


# -- the exporter's dma-buf ops ---------------------------------------------------------------------
def exported(s: System) -> int:
    return V.vfio_device_feature(s, GPU, req(ranges=[(0, 8192)]))


B.IMPORTERS["no-invalidate"] = None  # importer ops without invalidate_mappings


def test_static_importer_is_refused_eopnotsupp(vsys: System) -> None:
    """vfio_pci_dmabuf.c:vfio_pci_dma_buf_attach(): !peer2peer (a static importer has no importer
    ops, so no allow_peer2peer) and !dma_buf_attach_revocable() are both EOPNOTSUPP."""
    buf_id = exported(vsys)
    for importer, p2p in ((None, True), (IMP, False), ("no-invalidate", True)):
        with pytest.raises(KernelError) as ei:
            B.dma_buf_dynamic_attach(vsys, buf_id, NIC, importer, allow_peer2peer=p2p)
        assert ei.value.errno == errno.EOPNOTSUPP
    assert B.get_buf(vsys, buf_id).attachments == []


def test_attach_to_revoked_buffer_is_enodev(vsys: System) -> None:
    buf_id = exported(vsys)
    assert V.vfio_set_memory(vsys, GPU, False)
    with pytest.raises(KernelError) as ei:
        B.dma_buf_dynamic_attach(vsys, buf_id, NIC, IMP)
    assert ei.value.errno == errno.ENODEV
    assert B.get_buf(vsys, buf_id).attachments == []


def test_pin_returns_zero_vfio_has_no_pin_op(vsys: System) -> None:
    """dma-buf.c:dma_buf_pin() returns 0 when the exporter has no .pin; vfio_pci_dmabuf_ops (7.2)
    has none (6.19's vfio_pci_dma_buf_pin() that refused is gone), so the buffer is not dynamic."""
    buf_id = exported(vsys)
    att = B.dma_buf_dynamic_attach(vsys, buf_id, NIC, IMP)
    B.dma_resv_lock(vsys, buf_id, "t")
    assert B.dma_buf_pin(vsys, att.id) == 0
    B.dma_resv_unlock(vsys, buf_id, "t")
    assert att.pinned and vsys.violations == []
    assert not B.dma_buf_is_dynamic(B.get_buf(vsys, buf_id))


def test_second_map_maps_again_and_holds_a_second_kref(vsys: System) -> None:
    """dma-buf.c:dma_buf_map_attachment() (7.2) calls map_dma_buf on every call (no EBUSY for a
    second map); vfio_pci_dmabuf.c:vfio_pci_dma_buf_map() takes a kref per table."""
    buf_id = exported(vsys)
    att = B.dma_buf_dynamic_attach(vsys, buf_id, NIC, IMP)
    B.dma_resv_lock(vsys, buf_id, "t")
    one = B.dma_buf_map_attachment(vsys, att.id)
    two = B.dma_buf_map_attachment(vsys, att.id)
    priv = B.get_buf(vsys, buf_id).priv
    assert one is not two and len(att.sgts) == 2 and priv.kref == 3
    B.dma_buf_unmap_attachment(vsys, att.id)
    B.dma_buf_unmap_attachment(vsys, att.id)
    B.dma_resv_unlock(vsys, buf_id, "t")
    assert priv.kref == 1 and att.sgt is None and vsys.violations == []


def test_open_flags_file_keeps_accmode_nonblock_fd_gets_cloexec(vsys: System) -> None:
    """dma-buf.c:dma_buf_getfile() keeps O_ACCMODE | O_NONBLOCK; dma_buf_fd() passes O_CLOEXEC to
    get_unused_fd_flags(); any other bit of open_flags is accepted and dropped."""
    for open_flags, want_file, want_cloexec in ((0o2000002, 0o2, True), (0o4001 | 0o100 | 1 << 30, 0o4001, False),
                                                (0xFFFFFFFF, 0o4003, True), (0, 0, False)):
        a = V.uapi_feature(vsys, GPU, req(open_flags=open_flags))
        assert (a.errno, a.blocked, a.size) == (0, False, 4096)
        assert (a.file_flags, a.cloexec) == (want_file, want_cloexec)


def test_low_power_entry_revokes_and_exit_restores(vsys: System) -> None:
    """vfio_pci_core.c:vfio_pci_runtime_pm_entry() moves every buffer to revoked; a second entry is
    EINVAL (pm_runtime_engaged); vfio_pci_runtime_pm_exit() un-revokes when memory is enabled."""
    buf_id = exported(vsys)
    assert V.uapi_feature(vsys, GPU, V.feature_request(V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, PROBE | SET)).errno == 0
    assert V.buffer_status(vsys, buf_id) == V.DmaBufStatus.OK  # PROBE does nothing
    assert V.uapi_feature(vsys, GPU, V.feature_request(V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, SET)).errno == 0
    assert V.buffer_status(vsys, buf_id) == V.DmaBufStatus.TEMP_REVOKED
    again = V.uapi_feature(vsys, GPU, V.feature_request(V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, SET))
    assert again.errno == errno.EINVAL
    assert V.uapi_feature(vsys, GPU, V.feature_request(V.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, SET)).errno == 0
    assert V.buffer_status(vsys, buf_id) == V.DmaBufStatus.OK


def test_map_of_revoked_buffer_is_enodev_and_works_after_unrevoke(vsys: System) -> None:
    buf_id = exported(vsys)
    att = B.dma_buf_dynamic_attach(vsys, buf_id, NIC, IMP)
    assert V.vfio_set_memory(vsys, GPU, False)
    assert vsys.ext["test-notified"] == [att.id] and att.invalidated  # move_notify, once
    B.dma_resv_lock(vsys, buf_id, "t")
    with pytest.raises(KernelError) as ei:
        B.dma_buf_map_attachment(vsys, att.id)
    assert ei.value.errno == errno.ENODEV and att.sgt is None
    B.dma_resv_unlock(vsys, buf_id, "t")
    assert V.vfio_set_memory(vsys, GPU, True)
    B.dma_resv_lock(vsys, buf_id, "t")
    sgt = B.dma_buf_map_attachment(vsys, att.id)
    B.dma_resv_unlock(vsys, buf_id, "t")
    assert sgt.map_type.name == "BUS_ADDR" and sum(n for _, n in sgt.entries) == 8192
    assert vsys.violations == []


def test_map_without_the_reservation_lock_is_a_locking_violation(vsys: System) -> None:
    buf_id = exported(vsys)
    att = B.dma_buf_dynamic_attach(vsys, buf_id, NIC, IMP)
    B.dma_buf_map_attachment(vsys, att.id)  # lockdep complains, the map goes on
    kinds = [v.kind for v in vsys.violations]
    assert kinds and set(kinds) == {"locking"}
    assert "without its reservation lock" in vsys.violations[0].message
    assert att.sgt is not None


def test_map_under_the_lock_is_clean_and_thru_host_bridge_uses_the_iommu(vsys: System) -> None:
    buf_id = exported(vsys)
    att = B.dma_buf_dynamic_attach(vsys, buf_id, FAR, IMP)
    B.dma_resv_lock(vsys, buf_id, "t")
    sgt = B.dma_buf_map_attachment(vsys, att.id)
    B.dma_buf_unmap_attachment(vsys, att.id)
    B.dma_resv_unlock(vsys, buf_id, "t")
    assert sgt.map_type.name == "THRU_HOST_BRIDGE" and sgt.iova is not None
    assert vsys.violations == []


# -- the fuzzer -----------------------------------------------------------------------------------
def reference_errno(arg: bytes) -> int | tuple[str, int]:
    """What the kernel returns for these bytes on the test GPU, written from the C of
    vfio_ioctl_device_feature(), vfio_check_feature(), vfio_pci_core_feature_dma_buf(),
    validate_dmabuf_input() and vfio_pci_core_fill_phys_vec(): an errno, or ("fd", length)."""
    if len(arg) < 8:
        return errno.EFAULT
    argsz, flags = struct.unpack_from("<II", arg)
    if argsz < 8:
        return errno.EINVAL
    if flags & ~(0xFFFF | GET | SET | PROBE):
        return errno.EINVAL
    if not flags & PROBE and flags & SET and flags & GET:
        return errno.EINVAL
    feat = flags & 0xFFFF
    if feat in (1, 2, 6, 7, 8, 9):
        return errno.ENOTTY
    if feat == 12:
        return errno.EINVAL
    if feat in (3, 4, 5):
        if flags & GET:
            return errno.EINVAL
        if flags & PROBE:
            return ("probe", 0)
        if not flags & SET or argsz - 8 < (4 if feat == 4 else 0):
            return errno.EINVAL
        if feat == 4:
            if len(arg) < 12:
                return errno.EFAULT
            return errno.EINVAL if struct.unpack_from("<i", arg, 8)[0] < 0 else errno.EBADF
        return ("probe", 0)
    if feat != DMA_BUF:
        return errno.ENOTTY
    if flags & SET:
        return errno.EINVAL
    if flags & PROBE:
        return ("probe", 0)
    if not flags & GET or argsz - 8 < 16:
        return errno.EINVAL
    if len(arg) < 24:
        return errno.EFAULT
    region, _, rflags, nr = struct.unpack_from("<IIII", arg, 8)
    if not nr or rflags:
        return errno.EINVAL
    if region >= 6 or not any(b.index == region and b.size for b in TOPO[GPU].bars):
        return errno.ENODEV
    if nr * 16 > 1 << 22:
        return errno.ENOMEM
    if len(arg) < 24 + 16 * nr:
        return errno.EFAULT
    ranges = [struct.unpack_from("<QQ", arg, 24 + 16 * k) for k in range(nr)]
    total = 0
    for off, ln in ranges:
        if not ln or off % 4096 or ln % 4096:
            return errno.EINVAL
        total += ln
        if total >= U64:
            return errno.EINVAL
    if total & 1 << 63:
        return errno.EINVAL
    bar = next((b for b in TOPO[GPU].bars if b.index == region and b.is_mem), None)
    if bar is None:
        return errno.EINVAL
    for off, ln in ranges:
        if bar.start + off >= U64 or bar.start + off + ln >= U64:
            return errno.EOVERFLOW
        if bar.start + off + ln > bar.start + bar.size:
            return errno.EINVAL
    return ("fd", total)


OFFSETS = st.one_of(st.sampled_from([0, 4096, 1 << 20, G1 - 4096, G1, 1 << 63, U64 - 4096, U64 - 1, 100]),
                    st.integers(0, U64 - 1))
LENGTHS = st.one_of(st.sampled_from([0, 4096, 8192, 1 << 20, G1, 1 << 62, 1 << 63, U64 - 4096, 4097]),
                    st.integers(0, U64 - 1))
FLAGS = st.one_of(st.sampled_from([GET | DMA_BUF] * 4 + [PROBE | GET | DMA_BUF, PROBE | DMA_BUF, SET | DMA_BUF,
                                                         GET | SET | DMA_BUF, DMA_BUF, GET | 1, GET | 1 << 20,
                                                         SET | 3, SET | 5, SET | 4, GET | 12, SET | 0]),
                  st.integers(0, (1 << 32) - 1))


@st.composite
def feature_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=96))
    ranges = draw(st.lists(st.tuples(OFFSETS, LENGTHS), max_size=4))
    nr = draw(st.one_of(st.just(len(ranges)), st.integers(0, 6), st.sampled_from([262144, 262145, (1 << 32) - 1])))
    region = draw(st.one_of(st.sampled_from([0, 1, 1, 1, 2, 3, 5, 6]), st.integers(0, (1 << 32) - 1)))
    rflags = draw(st.sampled_from([0] * 6 + [1, 1 << 31]))
    payload = body(region, nr, ranges, rflags)
    argsz = draw(st.one_of(st.just(8 + len(payload)), st.sampled_from([0, 7, 8, 23, 24]),
                           st.integers(0, (1 << 32) - 1)))
    full = hdr(argsz, draw(FLAGS)) + payload
    cut = draw(st.one_of(st.none(), st.integers(0, len(full))))
    return full if cut is None else full[:cut]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arg=feature_bytes())
def test_fuzz_feature_bytes_only_kernel_errnos(arg: bytes) -> None:
    s = opened()
    want = reference_errno(arg)
    try:
        got = V.vfio_device_feature(s, GPU, arg)
    except KernelError as exc:
        assert exc.errno in KERNEL_ERRNOS, exc
        assert want == exc.errno, (exc, want)
        assert B.state(s).bufs == {}
        return
    assert isinstance(want, tuple), (got, want)
    assert not isinstance(got, bool)
    if want[0] == "probe":
        assert got == 0 and B.state(s).bufs == {}
    else:
        buf = B.get_buf(s, got)
        assert buf.size == want[1] > 0
        priv = buf.priv
        assert isinstance(priv, V.VfioPciDmaBuf)
        assert buf.size == sum(n for _, n in priv.phys_vec)


class _PinningExporter:
    """A dynamic exporter (it has .pin/.unpin), as GPU drivers are; maps to nothing."""

    def attach(self, system: System, buf: B.DmaBuf, att: B.Attachment) -> None:
        return None

    def detach(self, system: System, buf: B.DmaBuf, att: B.Attachment) -> None:
        return None

    def pin(self, system: System, att: B.Attachment) -> None:
        system.ext.setdefault("pins", []).append(att.id)

    def unpin(self, system: System, att: B.Attachment) -> None:
        system.ext.setdefault("unpins", []).append(att.id)

    def map(self, system: System, att: B.Attachment, direction: object) -> B.SgTable:
        from p2pdma.p2p.decide import MapType
        return B.SgTable([(0x1000, 4096)], MapType.NONE, [(0x1000, 4096)])

    def unmap(self, system: System, att: B.Attachment, sgt: B.SgTable, direction: object) -> None:
        return None

    def release(self, system: System, buf: B.DmaBuf) -> None:
        return None


B.EXPORTERS["test-pinning"] = _PinningExporter()


def test_static_importer_of_a_dynamic_exporter_pins_on_map_and_waits_for_kernel_fences(vsys: System) -> None:
    """dma-buf.c:dma_buf_map_attachment() (7.2): dma_buf_pin_on_map() for a static attachment of an
    exporter with .pin; after map_dma_buf a static importer waits for KERNEL fences;
    dma_buf_invalidate_mappings() calls only importer ops that have invalidate_mappings."""
    buf = B.dma_buf_export(vsys, "test-pinning", 4096, object())
    assert B.dma_buf_is_dynamic(buf)
    static = B.dma_buf_dynamic_attach(vsys, buf.id, NIC, None)
    quiet = B.dma_buf_dynamic_attach(vsys, buf.id, NVME, "no-invalidate")
    B.dma_resv_lock(vsys, buf.id, "t")
    k = B.dma_resv_add_fence(vsys, buf.id, "copy-engine", B.ResvUsage.KERNEL)
    with pytest.raises(B.ResvWouldBlock):
        B.dma_buf_map_attachment(vsys, static.id)
    B.dma_resv_unlock(vsys, buf.id, "t")
    B.dma_fence_signal(vsys, buf.id, k)
    B.dma_resv_lock(vsys, buf.id, "t")
    B.dma_buf_map_attachment(vsys, static.id)
    assert vsys.ext["pins"] == [static.id] and static.pinned
    B.dma_buf_invalidate_mappings(vsys, buf.id)
    assert not static.invalidated and not quiet.invalidated  # neither has invalidate_mappings
    B.dma_buf_unmap_attachment(vsys, static.id)
    B.dma_resv_unlock(vsys, buf.id, "t")
    assert vsys.ext["unpins"] == [static.id] and vsys.violations == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arg=feature_bytes())
def test_uapi_feature_answers_every_request_without_raising(arg: bytes) -> None:
    """The conformance entry point: bytes in, an answer out, the same errno as the ioctl path."""
    s = opened()
    a = V.uapi_feature(s, GPU, arg)
    want = reference_errno(arg)
    if isinstance(want, int):
        assert a.errno == want and a.size is None
    else:
        assert a.errno == 0 and not a.blocked
        assert a.size == (want[1] if want[0] == "fd" else None)
        if a.size is not None:
            assert a.file_flags is not None and a.file_flags & ~(V.O_ACCMODE | V.O_NONBLOCK) == 0
