"""vfio-pci as Linux 7.2 merged it: BAR regions, the memory bit, power states, resets, close, and
the ``VFIO_DEVICE_FEATURE_DMA_BUF`` export of BAR ranges with revoke.

Mirrors vfio_ioctl_device_feature() of drivers/vfio/vfio_main.c, vfio_check_feature(),
vfio_pci_core_ioctl_feature() and the reset and PM paths of drivers/vfio/pci/vfio_pci_core.c and
vfio_pci_config.c, and vfio_pci_dmabuf.c (7.2): each mapping holds a kref on the buffer; a revoke
(vfio_pci_dma_buf_move()) sets ``revoked``, invalidates every importer, waits for every fence
under the reservation lock, then drops the creation reference and waits on a completion until
every mapping is unmapped. All of this runs under ``memory_lock``, so an operation that waits
blocks every later one (an export included) behind it: blocked operations are state
(``VfioDevice.busy`` / ``waiters``), resumed when a fence signals or a mapping goes.

Stable entry points for user space (tests/kernel/ compares them with the real kernel):

- ``uapi_feature(system, bdf, bytes) -> FeatureAnswer``: VFIO_DEVICE_FEATURE on the request's
  bytes: errno (0 on success), result (fd id or 0), blocked (+ ticket), the new dma-buf's size,
  file f_flags (O_ACCMODE | O_NONBLOCK) and whether the fd is O_CLOEXEC. Never raises.
- ``uapi_result(system, bdf, ticket)``: the answer of a call that blocked, once it returned.
- lifetime steps, each True when the call returned, False while it sleeps in the kernel:
  ``vfio_set_memory()`` (command register write), ``vfio_reset()`` (VFIO_DEVICE_RESET),
  ``vfio_flr()``, ``vfio_set_power()`` (PMCSR), ``vfio_hot_reset()``, ``vfio_close()``,
  ``vfio_unbind()`` / ``vfio_unplug()``; fences with ``dmabuf.dma_buf_import_sync_file()`` and
  ``dmabuf.dma_fence_signal()``; ``dmabuf.dma_buf_put()`` closes a dma-buf fd.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from p2pdma.errors import KernelError
from p2pdma.model import dma as D
from p2pdma.model import dmabuf as B
from p2pdma.model.provider import P2pdmaProvider, pcim_p2pdma_init, pcim_p2pdma_provider
from p2pdma.model.system import PAGE_SIZE, System, fast_copy

# include/uapi/linux/vfio.h
VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10
VFIO_DEVICE_FEATURE_DMA_BUF = 11
VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 = 12
# answered ENOTTY by vfio core for a device without mig_ops / log_ops (plain vfio-pci)
NO_MIG_OPS_FEATURES = frozenset({1, 2, 6, 7, 8, 9})
O_ACCMODE = 0o3
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
VFIO_PCI_ROM_REGION_INDEX = 6
FEATURE_HDR = struct.Struct("<II")  # struct vfio_device_feature: argsz, flags
DMA_BUF_HDR = struct.Struct("<IIII")  # region_index, open_flags, flags, nr_ranges
DMA_RANGE = struct.Struct("<QQ")  # struct vfio_region_dma_range: offset, length
DMA_IOVA_USE_SWIOTLB = 1 << 63
KMALLOC_MAX_SIZE = 1 << 22  # memdup_array_user() beyond this fails with ENOMEM
U64 = (1 << 64) - 1
PCI_COMMAND_MEMORY = 0x2
EXPORTER = "vfio-pci"


class DmaBufStatus(IntEnum):
    """What a buffer's state means to userspace. 7.2 keeps one bit (``revoked``) in ``struct
    vfio_pci_dma_buf``; 6.19's enum is gone. PERM_REVOKED is the 7.2 state ``revoked`` with
    ``vdev == NULL`` (after vfio_pci_dma_buf_cleanup()), which can never be restored."""

    def __deepcopy__(self, memo: object) -> DmaBufStatus:
        return self  # members are constants: copies share them

    OK = 0
    TEMP_REVOKED = 1
    PERM_REVOKED = 2


@dataclass(slots=True)
class VfioPciDmaBuf:
    """``struct vfio_pci_dma_buf`` (7.2): the ranges as ``struct phys_vec`` (paddr, len), the
    provider, the ``revoked`` bit and the kref every mapping holds (1 for the creation
    reference; vfio_pci_dma_buf_map() takes one, vfio_pci_dma_buf_unmap() drops it)."""

    vdev: str | None
    size: int
    phys_vec: list[tuple[int, int]]
    provider: P2pdmaProvider
    region_index: int
    revoked: bool = False
    kref: int = 1

    @property
    def status(self) -> DmaBufStatus:
        if not self.revoked:
            return DmaBufStatus.OK
        return DmaBufStatus.TEMP_REVOKED if self.vdev is not None else DmaBufStatus.PERM_REVOKED

    @property
    def nr_ranges(self) -> int:
        return len(self.phys_vec)


@dataclass(slots=True)
class VfioOp:
    """An operation inside vfio-pci that holds (or waits for) ``memory_lock``: a revoke trigger,
    an un-revoke, a close, or a DMA_BUF export. ``steps`` are what is left to do; a step that
    waits leaves the op blocked (the ioctl or config write has not returned): in the fence
    wait (dma_resv_wait_timeout() under the buffer's lock) or in wait_for_completion() until
    every mapping is unmapped. Plain data, so the checker copies and compares it."""

    ticket: int
    reason: str
    steps: list[str]
    todo: list[int] | None = None  # buffers left in the current vfio_pci_dma_buf_move()
    phase: str = ""  # "" | "fences" | "unmaps" (what the current buffer waits for)
    buf: int | None = None
    arg: int = 0  # export: the new dma-buf
    result: int = 0  # what the op returns (an fd, 0, or -errno)

    @property
    def bufs(self) -> list[int]:
        return ([] if self.buf is None else [self.buf]) + list(self.todo or [])

    @property
    def waiting(self) -> str:
        """What the op waits for right now, in words ("" while it has not started)."""
        if self.phase == "fences":
            return f"fences of dma-buf {self.buf}"
        if self.phase == "unmaps":
            return f"unmaps of dma-buf {self.buf}"
        return "memory_lock"


@dataclass(slots=True)
class VfioDevice:
    """A vfio-pci device as userspace holds it open."""

    bdf: str
    command: int = PCI_COMMAND_MEMORY
    dmabufs: list[int] = field(default_factory=list)
    is_open: bool = True
    registered: bool = True
    busy: VfioOp | None = None  # holds memory_lock (possibly blocked inside)
    waiters: list[VfioOp] = field(default_factory=list)  # blocked in down_write(memory_lock)
    done: dict[int, int] = field(default_factory=dict)  # ticket -> result (fd or -errno)
    wait_for_fences: bool = True
    resets: int = 0
    power_d3hot: bool = False
    pm_runtime_engaged: bool = False
    unbind_requested: int = 0  # request notifier signals sent while unbind waits for close
    unbind_after_close: bool = False
    unplug_after_unbind: bool = False
    dev_set: tuple[str, ...] = ()

    @property
    def pending(self) -> list[VfioOp]:
        """Operations not yet returned: the one inside memory_lock, then those queued for it."""
        return ([self.busy] if self.busy is not None else []) + list(self.waiters)


@dataclass(slots=True)
class VfioState:
    devices: dict[str, VfioDevice] = field(default_factory=dict)
    advancing: bool = False  # re-entrancy guard of _advance() (a callback unmapping inside it)


def _st(system: System) -> VfioState:
    st = system.ext.get("vfio")
    if st is None:
        st = system.ext["vfio"] = VfioState()
    assert isinstance(st, VfioState)
    return st


def vdev_of(system: System, bdf: str) -> VfioDevice:
    v = _st(system).devices.get(bdf)
    if v is None or not v.is_open:
        raise KernelError(f"{bdf} is not open through vfio-pci", errno.ENODEV)
    return v


def memory_enabled(v: VfioDevice) -> bool:
    """Mirrors __vfio_pci_memory_enabled() (7.2): the command register's memory-space bit, and the
    function not in D3hot (its BARs do not decode there)."""
    return bool(v.command & PCI_COMMAND_MEMORY) and not v.power_d3hot


def vfio_open(system: System, bdf: str, *, wait_for_fences: bool = True, dev_set: tuple[str, ...] = ()) -> VfioDevice:
    """Bind vfio-pci and open the device (pcim_p2pdma_init() as vfio_pci_core_enable() does,
    EOPNOTSUPP tolerated). ``wait_for_fences=False`` seeds a revoke that waits for nothing (neither
    fences nor unmaps), the bug 7.2's kref and completion close. ``dev_set``: the other devices
    of the reset domain (vfio_pci_core_register_dev_set())."""
    system.device(bdf)
    old = _st(system).devices.get(bdf)
    if old is not None and old.is_open:
        raise KernelError(f"{bdf} is already open", errno.EBUSY)
    drv = system.driver(bdf)
    if drv is None:
        system.bind(bdf, "vfio-pci")
    elif drv != "vfio-pci":
        raise KernelError(f"{bdf} is bound to {drv}, not vfio-pci", errno.EBUSY)
    try:
        pcim_p2pdma_init(system, bdf)
    except KernelError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
    v = VfioDevice(bdf=bdf, wait_for_fences=wait_for_fences, dev_set=tuple(d for d in dev_set if d != bdf))
    _st(system).devices[bdf] = v
    system.log(f"vfio open {bdf}")
    return v


def vfio_check_feature(flags: int, argsz: int, supported_ops: int, minsz: int) -> int:
    """Mirrors vfio_check_feature() (include/linux/vfio.h, 7.2): 1 to go on, 0 for a successful
    PROBE, -errno."""
    if (flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)) & ~supported_ops:
        return -errno.EINVAL
    if flags & VFIO_DEVICE_FEATURE_PROBE:
        return 0
    if not flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET):
        return -errno.EINVAL
    if argsz < minsz:
        return -errno.EINVAL
    return 1


class IoctlBlocked(KernelError):
    """The ioctl has not returned: it sleeps inside the kernel (``ticket`` names it; its result
    appears in ``VfioDevice.done`` when it completes). Not an errno userspace ever sees."""

    def __init__(self, message: str, ticket: int) -> None:
        super().__init__(message, errno.EINPROGRESS)
        self.ticket = ticket


def _checked(ret: int, what: str) -> int:
    if ret < 0:
        raise KernelError(what, -ret)
    return ret


def vfio_device_feature(system: System, bdf: str, arg: bytes) -> int:
    """The VFIO_DEVICE_FEATURE ioctl on the bytes userspace passes. Returns 0 (PROBE, SET) or the
    new dma-buf's id (the fd); raises KernelError with the kernel's errno, IoctlBlocked when the
    call sleeps. Mirrors vfio_ioctl_device_feature() (drivers/vfio/vfio_main.c, 7.2) and its
    default case vfio_pci_core_ioctl_feature() (drivers/vfio/pci/vfio_pci_core.c, 7.2) for a
    plain vfio-pci device: no mig_ops, no log_ops, no SR-IOV VF token."""
    v = vdev_of(system, bdf)
    if len(arg) < FEATURE_HDR.size:
        raise KernelError("feature header not readable", errno.EFAULT)
    argsz, flags = FEATURE_HDR.unpack_from(arg, 0)
    minsz = FEATURE_HDR.size
    if argsz < minsz:
        raise KernelError(f"argsz {argsz} < {minsz}", errno.EINVAL)
    if flags & ~(VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET
                 | VFIO_DEVICE_FEATURE_PROBE):
        raise KernelError(f"unknown feature flags {flags:#x}", errno.EINVAL)
    if not flags & VFIO_DEVICE_FEATURE_PROBE and flags & VFIO_DEVICE_FEATURE_SET and flags & VFIO_DEVICE_FEATURE_GET:
        raise KernelError("GET and SET together without PROBE", errno.EINVAL)
    feature = flags & VFIO_DEVICE_FEATURE_MASK
    data, dsz = arg[minsz:], argsz - minsz
    if feature in NO_MIG_OPS_FEATURES:
        # vfio_ioctl_device_feature_migration() and friends: !device->mig_ops / !device->log_ops
        raise KernelError(f"feature {feature}: vfio-pci has no migration or dirty-logging ops", errno.ENOTTY)
    if feature == VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2:
        # vfio_ioctl_device_feature_migration_precopy_info_v2(): no PRE_COPY migration flag
        raise KernelError("MIG_PRECOPY_INFOv2 without PRE_COPY migration", errno.EINVAL)
    if feature == VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY:
        # vfio_pci_core_pm_entry(): SET only, no payload
        if _checked(vfio_check_feature(flags, dsz, VFIO_DEVICE_FEATURE_SET, 0), "LOW_POWER_ENTRY") == 0:
            return 0
        return _start(system, v, "pm-entry")
    if feature == VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP:
        # vfio_pci_core_pm_entry_with_wakeup(): SET with struct vfio_device_low_power_entry_with_wakeup
        # (s32 wakeup_eventfd + u32 reserved: 8 bytes, the minsz vfio_check_feature() gets); no eventfds here
        if _checked(vfio_check_feature(flags, dsz, VFIO_DEVICE_FEATURE_SET, 8), "LOW_POWER_ENTRY_WITH_WAKEUP") == 0:
            return 0
        if len(data) < 4:
            raise KernelError("wakeup entry not readable", errno.EFAULT)
        (efd,) = struct.unpack_from("<i", data, 0)
        if efd < 0:
            raise KernelError(f"wakeup_eventfd {efd}", errno.EINVAL)
        raise KernelError(f"fd {efd} is not an eventfd", errno.EBADF)  # eventfd_ctx_fdget()
    if feature == VFIO_DEVICE_FEATURE_LOW_POWER_EXIT:
        # vfio_pci_core_pm_exit(): SET only, no payload
        if _checked(vfio_check_feature(flags, dsz, VFIO_DEVICE_FEATURE_SET, 0), "LOW_POWER_EXIT") == 0:
            return 0
        return _start(system, v, "pm-exit")
    if feature == VFIO_DEVICE_FEATURE_PCI_VF_TOKEN:
        # vfio_pci_core_feature_token(): !vdev->vf_token (not an SR-IOV PF)
        raise KernelError("no VF token on this device", errno.ENOTTY)
    if feature == VFIO_DEVICE_FEATURE_DMA_BUF:
        return vfio_pci_core_feature_dma_buf(system, v, flags, data, dsz)
    raise KernelError(f"feature {feature} not supported", errno.ENOTTY)


def _validate_dmabuf_input(ranges: list[tuple[int, int]]) -> int:
    """Mirrors validate_dmabuf_input() (7.2): page-aligned non-empty ranges whose total fits."""
    length = 0
    for off, ln in ranges:
        if not ln or off % PAGE_SIZE or ln % PAGE_SIZE:
            raise KernelError(f"range {off:#x}+{ln:#x} empty or not page aligned", errno.EINVAL)
        length += ln
        if length > U64:
            raise KernelError("total length overflows", errno.EINVAL)
    if length & DMA_IOVA_USE_SWIOTLB:
        raise KernelError(f"total length {length:#x} too large", errno.EINVAL)
    return length


def _fill_phys_vec(ranges: list[tuple[int, int]], start: int, length: int) -> list[tuple[int, int]]:
    """Mirrors vfio_pci_core_fill_phys_vec() (7.2): BAR-relative ranges to ``struct phys_vec``
    (paddr, len) inside the BAR."""
    out = []
    max_addr = start + length
    for off, ln in ranges:
        if not ln:
            raise KernelError("empty range", errno.EINVAL)
        paddr = start + off
        end = paddr + ln
        if paddr > U64 or end > U64:
            raise KernelError(f"range {off:#x}+{ln:#x} overflows", errno.EOVERFLOW)
        if end > max_addr:
            raise KernelError(f"range {off:#x}+{ln:#x} ends past the BAR", errno.EINVAL)
        out.append((paddr, ln))
    return out


def vfio_pci_core_get_iomap_ok(system: System, bdf: str, bar: int) -> bool:
    """Whether vfio_pci_core_get_iomap() (7.2) gives a mapping: an implemented BAR (non-zero
    length) that pci_iomap() can map; an absent BAR is an error pointer. (Non-mappable BARs in
    the p2pdma sense still iomap: they fail later, with no provider.)"""
    return any(b.index == bar and b.size > 0 for b in system.topo[bdf].bars)


def vfio_pci_core_feature_dma_buf(system: System, v: VfioDevice, flags: int, data: bytes, argsz: int) -> int:
    """Export BAR ranges as a dma-buf. Mirrors vfio_pci_core_feature_dma_buf() (7.2): ENODEV for a
    BAR that is absent or cannot be mapped before the ranges are copied; then validate, the
    provider, registration; the export takes memory_lock (so it sleeps behind a revoke that
    waits) and is born revoked when memory decode is off at that moment."""
    ret = vfio_check_feature(flags, argsz, VFIO_DEVICE_FEATURE_GET, DMA_BUF_HDR.size)
    if ret != 1:
        if ret < 0:
            raise KernelError(f"feature flags {flags:#x} / argsz {argsz}", -ret)
        return 0
    if len(data) < DMA_BUF_HDR.size:
        raise KernelError("dma_buf request not readable", errno.EFAULT)
    region_index, open_flags, req_flags, nr_ranges = DMA_BUF_HDR.unpack_from(data, 0)
    if not nr_ranges or req_flags:
        raise KernelError(f"nr_ranges {nr_ranges}, flags {req_flags:#x}", errno.EINVAL)
    if region_index >= VFIO_PCI_ROM_REGION_INDEX or not vfio_pci_core_get_iomap_ok(system, v.bdf, region_index):
        raise KernelError(f"region {region_index} is not an implemented, mappable BAR", errno.ENODEV)
    if nr_ranges * DMA_RANGE.size > KMALLOC_MAX_SIZE:
        raise KernelError(f"{nr_ranges} ranges", errno.ENOMEM)  # memdup_array_user()
    need = DMA_BUF_HDR.size + nr_ranges * DMA_RANGE.size
    if len(data) < need:
        raise KernelError(f"{nr_ranges} ranges need {need} bytes, {len(data)} given", errno.EFAULT)
    ranges = [DMA_RANGE.unpack_from(data, DMA_BUF_HDR.size + k * DMA_RANGE.size) for k in range(nr_ranges)]
    length = _validate_dmabuf_input(ranges)
    # vfio_pci_core_get_dmabuf_phys()
    provider = pcim_p2pdma_provider(system, v.bdf, region_index)
    if provider is None:
        raise KernelError(f"BAR{region_index} of {v.bdf} has no p2pdma provider", errno.EINVAL)
    bar = next(b for b in system.topo[v.bdf].bars if b.index == region_index)
    phys = _fill_phys_vec(ranges, bar.start, bar.size)
    if not v.registered:  # vfio_device_try_get_registration()
        raise KernelError(f"{v.bdf} is being unregistered", errno.ENODEV)
    priv = VfioPciDmaBuf(vdev=v.bdf, size=length, phys_vec=phys, provider=provider, region_index=region_index)
    buf = B.dma_buf_export(system, EXPORTER, length, priv, open_flags)
    system.log(f"vfio DMA_BUF {v.bdf} BAR{region_index} {len(phys)} range(s) -> dma-buf {buf.id}")
    return _start(system, v, "export", arg=buf.id)


FINDING_MULTI_RANGE = B.FINDING_IOVA_OFFSET  # recorded when such a buffer is mapped through an IOMMU


def dma_buf_request(region_index: int, ranges: list[tuple[int, int]], *, open_flags: int = 0o2000000,
                    flags: int = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
                    req_flags: int = 0, argsz: int | None = None) -> bytes:
    """The bytes userspace builds for the ioctl (struct vfio_device_feature + dma_buf + ranges)."""
    body = DMA_BUF_HDR.pack(region_index, open_flags, req_flags, len(ranges)) + b"".join(
        DMA_RANGE.pack(o, n) for o, n in ranges)
    size = FEATURE_HDR.size + len(body) if argsz is None else argsz
    return FEATURE_HDR.pack(size, flags) + body


def feature_request(feature: int, flags: int, payload: bytes = b"", argsz: int | None = None) -> bytes:
    """The bytes of any VFIO_DEVICE_FEATURE request: header (argsz, flags | feature) + payload."""
    size = FEATURE_HDR.size + len(payload) if argsz is None else argsz
    return FEATURE_HDR.pack(size, flags | feature) + payload


class VfioExporter:
    """``vfio_pci_dmabuf_ops`` (7.2): attach, map_dma_buf, unmap_dma_buf, release. No .pin or
    .unpin (6.19's pin ops are gone), so dma_buf_pin() returns 0 for a vfio buffer."""

    def attach(self, system: System, buf: B.DmaBuf, att: B.Attachment) -> None:
        """Mirrors vfio_pci_dma_buf_attach() (7.2): p2p importers only, not while revoked, and only
        importers that implement invalidate_mappings (dma_buf_attach_revocable())."""
        priv: VfioPciDmaBuf = buf.priv
        if not att.peer2peer:
            raise KernelError(f"{att.dev}: importer does not allow peer2peer", errno.EOPNOTSUPP)
        if priv.revoked:
            raise KernelError(f"dma-buf {buf.id} is revoked", errno.ENODEV)
        if not B.dma_buf_attach_revocable(att):
            raise KernelError(f"{att.dev}: importer cannot be revoked (no invalidate_mappings)", errno.EOPNOTSUPP)

    def detach(self, system: System, buf: B.DmaBuf, att: B.Attachment) -> None:
        return None

    def map(self, system: System, att: B.Attachment, direction: D.DmaDirection) -> B.SgTable:
        """Mirrors vfio_pci_dma_buf_map() (7.2): ENODEV while revoked; each mapping holds a kref."""
        buf = B.state(system).bufs[att.dmabuf]
        priv: VfioPciDmaBuf = buf.priv
        B.dma_resv_assert_held(system, buf, "vfio_pci_dma_buf_map")
        if priv.revoked:
            raise KernelError(f"dma-buf {buf.id} is revoked", errno.ENODEV)
        sgt = B.dma_buf_phys_vec_to_sgt(system, att, priv.provider, priv.phys_vec, priv.size, direction)
        priv.kref += 1
        return sgt

    def unmap(self, system: System, att: B.Attachment, sgt: B.SgTable, direction: D.DmaDirection) -> None:
        """Mirrors vfio_pci_dma_buf_unmap() (7.2): free the table, drop the mapping's kref (the
        last one completes the revoke's wait)."""
        buf = B.state(system).bufs[att.dmabuf]
        priv: VfioPciDmaBuf = buf.priv
        B.dma_resv_assert_held(system, buf, "vfio_pci_dma_buf_unmap")
        B.dma_buf_free_sgt(system, att, sgt, direction)
        priv.kref -= 1
        if priv.kref == 0:
            system.log(f"vfio dma-buf {buf.id}: last mapping gone (complete)")
        # the revoke sleeping in wait_for_completion() runs once the importer unlocks

    def release(self, system: System, buf: B.DmaBuf) -> None:
        """Mirrors vfio_pci_dma_buf_release(): off the device's list."""
        priv: VfioPciDmaBuf = buf.priv
        if priv.vdev is not None:
            v = _st(system).devices.get(priv.vdev)
            if v is not None and buf.id in v.dmabufs:
                v.dmabufs.remove(buf.id)


B.EXPORTERS[EXPORTER] = VfioExporter()


def vfio_pci_dma_buf_iommufd_map(system: System, att: B.Attachment) -> tuple[int, int]:
    """The private interconnect iommufd uses (7.2): the one physical range of a vfio buffer.
    EOPNOTSUPP for another exporter or more than one range, ENODEV while revoked. Mirrors
    vfio_pci_dma_buf_iommufd_map() in drivers/vfio/pci/vfio_pci_dmabuf.c."""
    buf = B.state(system).bufs[att.dmabuf]
    B.dma_resv_assert_held(system, buf, "vfio_pci_dma_buf_iommufd_map")
    if buf.exporter != EXPORTER:
        raise KernelError(f"dma-buf {buf.id} is not a vfio-pci buffer", errno.EOPNOTSUPP)
    priv: VfioPciDmaBuf = buf.priv
    if priv.revoked:
        raise KernelError(f"dma-buf {buf.id} is revoked", errno.ENODEV)
    if priv.nr_ranges != 1:
        raise KernelError(f"dma-buf {buf.id} has {priv.nr_ranges} ranges; iommufd takes one", errno.EOPNOTSUPP)
    return priv.phys_vec[0]


# -- memory_lock and the operations that take it ------------------------------------------------
# Each operation is a list of steps run in order while it holds memory_lock:
#   "revoke"        vfio_pci_dma_buf_move(vdev, true)
#   "unrevoke?"     vfio_pci_dma_buf_move(vdev, false) if __vfio_pci_memory_enabled()
#   "cleanup"       the rest of vfio_pci_dma_buf_cleanup(): buffers leave the device for good
#   other names     the hardware effect (see _effect)
_OPS: dict[str, list[str]] = {
    # vfio_basic_config_write(): memory bit cleared / set
    "decode-off": ["revoke", "decode-off"],
    "decode-on": ["decode-on", "unrevoke?"],
    # vfio_pci_ioctl_reset(): pci_try_reset_function() between the moves
    "reset": ["revoke", "reset", "unrevoke?"],
    # vfio_exp_config_write() / vfio_af_config_write(): FLR through config space
    "flr": ["revoke", "reset", "unrevoke?"],
    # vfio_pci_set_power_state() through vfio_pm_config_write()
    "d3hot": ["revoke", "d3hot", "unrevoke?"],
    "d0": ["d0", "unrevoke?"],
    # vfio_pci_runtime_pm_entry() / vfio_pci_runtime_pm_exit()
    "pm-entry": ["revoke", "pm-entry"],
    "pm-exit": ["pm-exit", "unrevoke?"],
    # vfio_pci_dma_buf_cleanup() from vfio_pci_core_close_device()
    "close": ["revoke", "cleanup", "close"],
    # the part of vfio_pci_core_feature_dma_buf() under memory_lock
    "export": ["export"],
    # vfio_pci_dev_set_hot_reset(): one device's share (revoke, then reset and un-revoke together)
    "hot-reset": ["revoke", "reset", "unrevoke?"],
}


def _start(system: System, v: VfioDevice, reason: str, arg: int = 0) -> int:
    """down_write(&vdev->memory_lock) and run: returns the op's result when it completes at once;
    raises IoctlBlocked when it sleeps (behind another op or inside its own wait)."""
    op = VfioOp(ticket=system.handle(), reason=reason, steps=list(_OPS[reason]), arg=arg)
    if v.busy is not None or v.waiters:
        system.log(f"vfio {v.bdf}: {reason} blocks on memory_lock")
    v.waiters.append(op)
    _advance_all(system)
    if op.ticket in v.done:
        ret = v.done.pop(op.ticket)
        if ret < 0:
            raise KernelError(f"{reason} failed", -ret)
        return ret
    raise IoctlBlocked(f"vfio {v.bdf}: {reason} waits for {op.waiting}", op.ticket)


def _advance_all(system: System) -> None:
    """Let every blocked vfio operation go as far as it can (the woken threads run)."""
    st = _st(system)
    if st.advancing:
        return
    st.advancing = True
    try:
        progress = True
        while progress:
            progress = False
            for v in list(st.devices.values()):
                progress |= _advance(system, v)
    finally:
        st.advancing = False


def _advance(system: System, v: VfioDevice) -> bool:
    """Run this device's memory_lock holder, then the next waiter, until one blocks. True when
    anything completed."""
    any_done = False
    while True:
        if v.busy is None:
            if not v.waiters:
                return any_done
            v.busy = v.waiters.pop(0)
        op = v.busy
        while op.steps:
            if not _step(system, v, op, op.steps[0]):
                return any_done
            op.steps.pop(0)
        v.busy = None
        any_done = True
        _complete(system, v, op)


def _live_bufs(system: System, v: VfioDevice) -> list[int]:
    """The device's buffers whose file is still active (get_file_active() succeeds)."""
    out = []
    for b in v.dmabufs:
        buf = B.state(system).bufs.get(b)
        if buf is not None and not buf.released:
            out.append(b)
    return out


def _step(system: System, v: VfioDevice, op: VfioOp, step: str) -> bool:
    """One step of an op; False when it must wait (state kept in ``op``)."""
    if step == "revoke":
        return _move(system, v, op, True)
    if step == "unrevoke?":
        if op.todo is None and not memory_enabled(v):
            return True
        return _move(system, v, op, False)
    _effect(system, v, op, step)
    return True


def _move(system: System, v: VfioDevice, op: VfioOp, revoked: bool) -> bool:
    """Mirrors vfio_pci_dma_buf_move() (7.2), one buffer at a time: lock, set revoked, invalidate
    every importer, wait for every fence under the lock; unlock; for a revoke drop the creation
    kref and wait until every mapping is unmapped, then re-arm; for an un-revoke clear revoked
    only after the fence wait. False when the op waits (and resumes here)."""
    if op.todo is None:
        op.todo = _live_bufs(system, v)
    while op.todo or op.buf is not None:
        if op.buf is None:
            b = op.todo[0]
            buf = B.state(system).bufs.get(b)
            if buf is None or buf.released:
                op.todo.pop(0)
                continue
            priv: VfioPciDmaBuf = buf.priv
            if priv.revoked == revoked:
                op.todo.pop(0)
                continue
            if buf.resv.holder is not None:
                return False  # dma_resv_lock() sleeps until the holder unlocks
            op.todo.pop(0)
            op.buf = b
            B.dma_resv_lock(system, b, "vfio")
            if revoked:
                priv.revoked = True
            B.dma_buf_invalidate_mappings(system, b)
            op.phase = "fences"
        buf = B.state(system).bufs[op.buf]
        priv = buf.priv
        if op.phase == "fences":
            if v.wait_for_fences and buf.resv.unsignaled():
                return False  # dma_resv_wait_timeout(BOOKKEEP) sleeps with the lock held
            B.dma_resv_unlock(system, op.buf, "vfio")
            if revoked:
                priv.kref -= 1  # kref_put() of the creation reference
                op.phase = "unmaps"
            else:
                if buf.resv.unsignaled():  # only the seeded no-wait exporter gets here
                    system.ext.setdefault("events", []).append(("unrevoke-early", v.bdf, op.reason, (buf.id,)))
                priv.revoked = False  # under the lock again in the kernel
                op.buf, op.phase = None, ""
                continue
        if op.phase == "unmaps":
            if v.wait_for_fences and priv.kref > 0:
                return False  # wait_for_completion(): every mapping must be unmapped
            _note_early(system, v, op, buf)
            priv.kref = max(priv.kref, 0) + 1  # kref_init() / reinit_completion()
            op.buf, op.phase = None, ""
    op.todo = None
    return True


def _note_early(system: System, v: VfioDevice, op: VfioOp, buf: B.DmaBuf) -> None:
    """A revoke that went on with fences unsignalled or mappings live (only the seeded no-wait
    exporter does): an event the checker reads."""
    priv: VfioPciDmaBuf = buf.priv
    if buf.resv.unsignaled() or priv.kref > 0:
        system.ext.setdefault("events", []).append(("revoke-early", v.bdf, op.reason, (buf.id,)))
        system.log(f"vfio {v.bdf}: {op.reason} goes on with dma-buf {buf.id} still fenced or mapped")


def _effect(system: System, v: VfioDevice, op: VfioOp, step: str) -> None:
    """The hardware or bookkeeping effect between the moves."""
    if step == "decode-off":
        v.command &= ~PCI_COMMAND_MEMORY
    elif step == "decode-on":
        v.command |= PCI_COMMAND_MEMORY
    elif step == "reset":
        v.resets += 1  # pci_try_reset_function() / pci_reset_bus(): decode comes back as it was
    elif step == "d3hot":
        v.power_d3hot = True
    elif step == "d0":
        v.power_d3hot = False
    elif step == "pm-entry":
        if v.pm_runtime_engaged:  # vfio_pci_runtime_pm_entry(): EINVAL after the move
            op.result = -errno.EINVAL
        v.pm_runtime_engaged = True  # the device may now runtime-suspend (D3)
    elif step == "pm-exit":
        v.pm_runtime_engaged = False
    elif step == "cleanup":
        for b in _live_bufs(system, v):
            B.state(system).bufs[b].priv.vdev = None
        v.dmabufs.clear()
    elif step == "close":
        v.registered = False
        v.command &= ~PCI_COMMAND_MEMORY
        v.is_open = False
    elif step == "export":
        buf = B.state(system).bufs[op.arg]
        B.dma_resv_lock(system, buf.id, "vfio")
        buf.priv.revoked = not memory_enabled(v)
        v.dmabufs.append(buf.id)
        B.dma_resv_unlock(system, buf.id, "vfio")


def _complete(system: System, v: VfioDevice, op: VfioOp) -> None:
    """up_write(&vdev->memory_lock): the op returns to its caller."""
    result = op.result
    if op.reason == "export":
        result = op.arg  # dma_buf_fd()
        system.log(f"vfio {v.bdf}: export -> dma-buf {op.arg} "
                   f"({'revoked' if B.state(system).bufs[op.arg].priv.revoked else 'ok'})")
    else:
        system.log(f"vfio {v.bdf}: {op.reason} done")
    v.done[op.ticket] = result
    if op.reason == "close":
        _after_close(system, v)


def _after_close(system: System, v: VfioDevice) -> None:
    if v.unbind_after_close and v.bdf in system.bindings:
        if system.unbind(v.bdf) and v.unplug_after_unbind:
            system.ext.setdefault("unplugged", set()).add(v.bdf)
            system.log(f"unplug {v.bdf} done")


def revoke_done(system: System, bdf: str) -> bool:
    """Whether no operation of this device is still inside (or queued for) memory_lock."""
    v = _st(system).devices.get(bdf)
    return v is None or (v.busy is None and not v.waiters)


def _fence_hook(system: System, buf_id: int) -> None:
    _advance_all(system)


B.FENCE_HOOKS.append(_fence_hook)
B.UNLOCK_HOOKS.append(_fence_hook)


def _run_op(system: System, bdf: str, reason: str) -> bool:
    """Start ``reason`` on an open device: True when it returned, False while it sleeps."""
    v = vdev_of(system, bdf)
    try:
        _start(system, v, reason)
    except IoctlBlocked:
        return False
    return True


def vfio_set_memory(system: System, bdf: str, enable: bool) -> bool:
    """A config write of the command register's memory bit. Mirrors vfio_basic_config_write()
    (drivers/vfio/pci/vfio_pci_config.c, 7.2): clearing it revokes every buffer (and waits),
    setting it un-revokes them (waiting for their fences first). True when the write returned."""
    v = vdev_of(system, bdf)
    if v.busy is None and not v.waiters and bool(v.command & PCI_COMMAND_MEMORY) == enable:
        return True  # no change of the bit: no move
    return _run_op(system, bdf, "decode-on" if enable else "decode-off")


def vfio_reset(system: System, bdf: str) -> bool:
    """VFIO_DEVICE_RESET: revoke, wait, reset the function, un-revoke when memory is enabled.
    Mirrors vfio_pci_ioctl_reset() (7.2)."""
    return _run_op(system, bdf, "reset")


def vfio_flr(system: System, bdf: str, via: str = "pcie") -> bool:
    """Function-level reset through a config write: PCI_EXP_DEVCTL_BCR_FLR (``pcie``, mirrors
    vfio_exp_config_write()) or PCI_AF_CTRL_FLR (``af``, vfio_af_config_write()), 7.2."""
    if via not in ("pcie", "af"):
        raise KernelError(f"FLR via {via!r} (pcie, af)", errno.EINVAL)
    return _run_op(system, bdf, "flr")


def vfio_set_power(system: System, bdf: str, state: str) -> bool:
    """A PMCSR write to D3hot or D0. Mirrors vfio_pci_set_power_state() via vfio_pm_config_write()
    (7.2): D3hot revokes first; back in D0 the buffers come back when memory is enabled."""
    if state not in ("D0", "D3hot"):
        raise KernelError(f"power state {state!r} (D0, D3hot)", errno.EINVAL)
    v = vdev_of(system, bdf)
    if (state == "D3hot") == v.power_d3hot and v.busy is None and not v.waiters:
        return True
    return _run_op(system, bdf, "d3hot" if state == "D3hot" else "d0")


def vfio_hot_reset(system: System, bdf: str) -> bool:
    """VFIO_DEVICE_PCI_HOT_RESET on a whole dev_set: every open device of the set revokes (and
    waits), the bus resets, then each un-revokes when its memory is enabled. Mirrors
    vfio_pci_dev_set_hot_reset() (7.2); the model runs each device's share as its own op, so
    the set is done when every share is. True when the ioctl returned."""
    v = vdev_of(system, bdf)
    devs = [v] + [d for b in v.dev_set if (d := _st(system).devices.get(b)) is not None and d.is_open]
    blocked = False
    for d in devs:
        try:
            _start(system, d, "hot-reset")
        except IoctlBlocked:
            blocked = True
    return not blocked


def vfio_close(system: System, bdf: str) -> bool:
    """Close the device: every buffer revoked for good (vfio_pci_dma_buf_cleanup(), 7.2), then
    the device is disabled. True when the close returned."""
    return _run_op(system, bdf, "close")


def vfio_unbind(system: System, bdf: str) -> bool:
    """Unbind vfio-pci. Mirrors vfio_unregister_group_dev() (drivers/vfio/vfio_main.c, 7.2): while
    userspace holds the device open the unbind sleeps, asking the user through the request
    notifier (VFIO_DEVICE_REQ_IRQ) each time it wakes, and goes on once the user has closed it.
    True when the unbind completed."""
    v = _st(system).devices.get(bdf)
    if v is not None and v.is_open:
        # the open fd still holds a registration reference: vfio_device_try_get_registration() succeeds
        # and exports go on until the user closes (the count drops to zero only then)
        v.unbind_after_close = True
        v.unbind_requested += 1
        system.log(f"vfio {bdf}: unbind waits for the user to close (request notifier)")
        return False
    return system.unbind(bdf)


def vfio_unplug(system: System, bdf: str) -> bool:
    """An orderly hot-unplug (pciehp, sysfs remove): the driver's remove runs first (the unbind
    waits for the user's close), then the device is gone. True when it is gone already."""
    v = _st(system).devices.get(bdf)
    if v is not None and v.is_open:
        v.unplug_after_unbind = True
    done = vfio_unbind(system, bdf)
    if done:
        system.ext.setdefault("unplugged", set()).add(bdf)
        system.log(f"unplug {bdf} done")
    return done


def unbind_waits(system: System, bdf: str) -> bool:
    """Whether an unbind is sleeping until the user closes the device."""
    v = _st(system).devices.get(bdf)
    return v is not None and v.is_open and v.unbind_after_close


def buffer_status(system: System, buf_id: int) -> DmaBufStatus:
    """The vfio status of an exported buffer."""
    priv = B.state(system).bufs[buf_id].priv
    assert isinstance(priv, VfioPciDmaBuf)
    return priv.status


def bar_accessible(system: System, bdf: str) -> bool:
    """Whether the device's BARs decode right now (vfio: memory bit set, D0, and not closed)."""
    v = _st(system).devices.get(bdf)
    if v is None:
        return True
    return v.is_open and memory_enabled(v)


fast_copy(VfioPciDmaBuf, VfioOp, VfioDevice, VfioState)


@dataclass(frozen=True, slots=True)
class FeatureAnswer:
    """What userspace sees of one VFIO_DEVICE_FEATURE ioctl: ``errno`` 0 on success (``result``
    the fd, or 0), the kernel's errno otherwise; ``blocked`` when the call sleeps (``ticket``
    names it for uapi_result()); for a new dma-buf its size, the file's f_flags (only
    O_ACCMODE | O_NONBLOCK of open_flags, dma_buf_getfile()) and whether the fd is O_CLOEXEC."""

    errno: int
    result: int = 0
    blocked: bool = False
    ticket: int | None = None
    size: int | None = None
    file_flags: int | None = None
    cloexec: bool | None = None


def _answer_for(system: System, ret: int) -> FeatureAnswer:
    buf = B.state(system).bufs.get(ret) if ret > 0 else None
    if buf is None:
        return FeatureAnswer(0, ret)
    return FeatureAnswer(0, ret, size=buf.size, file_flags=buf.file_flags, cloexec=buf.fd_cloexec)


def uapi_feature(system: System, bdf: str, arg: bytes) -> FeatureAnswer:
    """VFIO_DEVICE_FEATURE on ``arg`` (the bytes of struct vfio_device_feature and its payload),
    answered as the 7.2 kernel answers it. Stable: bytes in, FeatureAnswer out; never raises a
    KernelError (the errno is in the answer)."""
    try:
        ret = vfio_device_feature(system, bdf, arg)
    except IoctlBlocked as blk:
        return FeatureAnswer(0, blocked=True, ticket=blk.ticket)
    except KernelError as exc:
        return FeatureAnswer(exc.errno)
    return _answer_for(system, ret)


def uapi_result(system: System, bdf: str, ticket: int) -> FeatureAnswer | None:
    """The answer of a call that blocked, once it returned (None while it still sleeps)."""
    v = _st(system).devices.get(bdf)
    if v is None or ticket not in v.done:
        return None
    ret = v.done[ticket]
    return FeatureAnswer(-ret) if ret < 0 else _answer_for(system, ret)
