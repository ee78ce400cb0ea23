"""vfio-pci: a device with BAR regions, the command register's memory bit, reset, close, and the
``VFIO_DEVICE_FEATURE_DMA_BUF`` export of BAR ranges with revoke.

Mirrors vfio_ioctl_device_feature() and vfio_check_feature() of drivers/vfio/vfio_main.c,
vfio_pci_core_feature_dma_buf(), validate_dmabuf_input(), vfio_pci_core_get_dmabuf_phys(),
vfio_pci_core_fill_phys_vec(), vfio_pci_dma_buf_move() and vfio_pci_dma_buf_cleanup() of
drivers/vfio/pci/vfio_pci_dmabuf.c and the structures of include/uapi/linux/vfio.h. A revoke marks
the buffers revoked, calls every importer's move_notify under the reservation lock, waits for their
fences, and only then lets the BAR go (the step that waits can be turned off to seed a bug).
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
VFIO_DEVICE_FEATURE_DMA_BUF = 11
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
    """``enum vfio_pci_dma_buf_status``."""

    def __deepcopy__(self, memo: object) -> DmaBufStatus:
        return self  # members are constants: copies share them

    OK = 0
    TEMP_REVOKED = 1
    PERM_REVOKED = 2


@dataclass(slots=True)
class VfioPciDmaBuf:
    """``struct vfio_pci_dma_buf``: the ranges as physical addresses and the provider."""

    vdev: str | None
    size: int
    phys_vec: list[tuple[int, int]]
    provider: P2pdmaProvider
    region_index: int
    status: DmaBufStatus = DmaBufStatus.OK


@dataclass(slots=True)
class PendingRevoke:
    """A revoke whose BAR may not go yet: the fences (buffer, fence id) present when it began
    waiting are not all signalled (dma_resv_wait_timeout() waits for exactly those)."""

    reason: str
    bufs: list[int]
    fences: list[tuple[int, int]]


@dataclass(slots=True)
class VfioDevice:
    """A vfio-pci device as userspace holds it open."""

    bdf: str
    command: int = PCI_COMMAND_MEMORY
    dmabufs: list[int] = field(default_factory=list)
    is_open: bool = True
    registered: bool = True
    pending: list[PendingRevoke] = field(default_factory=list)
    wait_for_fences: bool = True
    resets: int = 0
    unbind_after_close: bool = False
    unplug_after_unbind: bool = False
    queued: list[str] = field(default_factory=list)  # operations blocked on memory_lock


@dataclass(slots=True)
class VfioState:
    devices: dict[str, VfioDevice] = field(default_factory=dict)


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
    """Mirrors __vfio_pci_memory_enabled(): the command register's memory-space bit."""
    return bool(v.command & PCI_COMMAND_MEMORY)


def vfio_open(system: System, bdf: str, *, wait_for_fences: bool = True) -> VfioDevice:
    """Bind vfio-pci and open the device (pcim_p2pdma_init() as vfio_pci_core_enable() does,
    EOPNOTSUPP tolerated). ``wait_for_fences=False`` seeds the revoke-without-wait bug."""
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
    v = VfioDevice(bdf=bdf, wait_for_fences=wait_for_fences)
    _st(system).devices[bdf] = v
    system.log(f"vfio open {bdf}")
    return v


def vfio_check_feature(flags: int, argsz: int, supported_ops: int, minsz: int) -> int:
    """Mirrors vfio_check_feature(): 1 to go on, 0 for a successful PROBE, -errno."""
    if (flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)) & ~supported_ops:
        return -errno.EINVAL
    if flags & VFIO_DEVICE_FEATURE_PROBE:
        return 0
    if not flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET):
        return -errno.EINVAL
    if argsz < minsz:
        return -errno.EINVAL
    return 1


def vfio_device_feature(system: System, bdf: str, arg: bytes) -> int:
    """The VFIO_DEVICE_FEATURE ioctl on the bytes userspace passes. Returns 0 (PROBE) or the new
    dma-buf's id (the fd); raises KernelError with the kernel's errno. Mirrors
    vfio_ioctl_device_feature() and vfio_pci_core_ioctl_feature()."""
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
    if flags & VFIO_DEVICE_FEATURE_MASK != VFIO_DEVICE_FEATURE_DMA_BUF:
        raise KernelError(f"feature {flags & VFIO_DEVICE_FEATURE_MASK} not supported", errno.ENOTTY)
    return vfio_pci_core_feature_dma_buf(system, v, flags, arg[minsz:], argsz - minsz)


def _validate_dmabuf_input(ranges: list[tuple[int, int]]) -> int:
    """Mirrors validate_dmabuf_input(): page-aligned non-empty ranges whose total fits."""
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
    """Mirrors vfio_pci_core_fill_phys_vec(): BAR-relative ranges to physical ones, inside the BAR."""
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


def vfio_pci_core_feature_dma_buf(system: System, v: VfioDevice, flags: int, data: bytes, argsz: int) -> int:
    """Export BAR ranges as a dma-buf. Mirrors vfio_pci_core_feature_dma_buf()."""
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
    if region_index >= VFIO_PCI_ROM_REGION_INDEX:
        raise KernelError(f"region {region_index} is not a BAR", errno.ENODEV)
    if nr_ranges * DMA_RANGE.size > KMALLOC_MAX_SIZE:
        raise KernelError(f"{nr_ranges} ranges", errno.ENOMEM)
    need = DMA_BUF_HDR.size + nr_ranges * DMA_RANGE.size
    if len(data) < need:
        raise KernelError(f"{nr_ranges} ranges need {need} bytes, {len(data)} given", errno.EFAULT)
    ranges = [DMA_RANGE.unpack_from(data, DMA_BUF_HDR.size + k * DMA_RANGE.size) for k in range(nr_ranges)]
    length = _validate_dmabuf_input(ranges)
    provider = pcim_p2pdma_provider(system, v.bdf, region_index)
    if provider is None:
        raise KernelError(f"BAR{region_index} of {v.bdf} has no p2pdma provider", errno.EINVAL)
    bar = next(b for b in system.topo[v.bdf].bars if b.index == region_index)
    phys = _fill_phys_vec(ranges, bar.start, bar.size)
    if not v.registered:
        raise KernelError(f"{v.bdf} is being unregistered", errno.ENODEV)
    priv = VfioPciDmaBuf(vdev=v.bdf, size=length, phys_vec=phys, provider=provider, region_index=region_index)
    buf = B.dma_buf_export(system, EXPORTER, length, priv, open_flags)
    B.dma_resv_lock(system, buf.id, "vfio")
    priv.status = DmaBufStatus.OK if memory_enabled(v) else DmaBufStatus.TEMP_REVOKED
    v.dmabufs.append(buf.id)
    B.dma_resv_unlock(system, buf.id, "vfio")
    system.log(f"vfio DMA_BUF {v.bdf} BAR{region_index} {len(phys)} range(s) -> dma-buf {buf.id}")
    return buf.id


def dma_buf_request(region_index: int, ranges: list[tuple[int, int]], *, open_flags: int = 0o2000000,
                    flags: int = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
                    req_flags: int = 0, argsz: int | None = None) -> bytes:
    """The bytes userspace builds for the ioctl (struct vfio_device_feature + dma_buf + ranges)."""
    body = DMA_BUF_HDR.pack(region_index, open_flags, req_flags, len(ranges)) + b"".join(
        DMA_RANGE.pack(o, n) for o, n in ranges)
    size = FEATURE_HDR.size + len(body) if argsz is None else argsz
    return FEATURE_HDR.pack(size, flags) + body


class VfioExporter:
    """``vfio_pci_dmabuf_ops``."""

    def attach(self, system: System, buf: B.DmaBuf, att: B.Attachment) -> None:
        """Mirrors vfio_pci_dma_buf_attach(): p2p importers only, and not while revoked."""
        priv: VfioPciDmaBuf = buf.priv
        if not att.peer2peer:
            raise KernelError(f"{att.dev}: importer does not allow peer2peer", errno.EOPNOTSUPP)
        if priv.status != DmaBufStatus.OK:
            raise KernelError(f"dma-buf {buf.id} is revoked", errno.ENODEV)

    def detach(self, system: System, buf: B.DmaBuf, att: B.Attachment) -> None:
        return None

    def pin(self, system: System, att: B.Attachment) -> None:
        """Mirrors vfio_pci_dma_buf_pin(): a revocable buffer cannot be pinned."""
        raise KernelError("vfio dma-bufs cannot be pinned", errno.EOPNOTSUPP)

    def unpin(self, system: System, att: B.Attachment) -> None:
        return None

    def map(self, system: System, att: B.Attachment, direction: D.DmaDirection) -> B.SgTable:
        """Mirrors vfio_pci_dma_buf_map()."""
        buf = B.state(system).bufs[att.dmabuf]
        priv: VfioPciDmaBuf = buf.priv
        B.dma_resv_assert_held(system, buf, "vfio_pci_dma_buf_map")
        if priv.status != DmaBufStatus.OK:
            raise KernelError(f"dma-buf {buf.id} is revoked", errno.ENODEV)
        return B.dma_buf_phys_vec_to_sgt(system, att, priv.provider, priv.phys_vec, priv.size, direction)

    def unmap(self, system: System, att: B.Attachment, sgt: B.SgTable, direction: D.DmaDirection) -> None:
        B.dma_buf_free_sgt(system, att, sgt, direction)

    def release(self, system: System, buf: B.DmaBuf) -> None:
        """Mirrors vfio_pci_dma_buf_release(): off the device's list."""
        priv: VfioPciDmaBuf = buf.priv
        if priv.vdev is not None:
            v = _st(system).devices.get(priv.vdev)
            if v is not None and buf.id in v.dmabufs:
                v.dmabufs.remove(buf.id)


B.EXPORTERS[EXPORTER] = VfioExporter()


def _move(system: System, v: VfioDevice, revoked: bool, permanent: bool = False) -> list[int]:
    """Mirrors vfio_pci_dma_buf_move() / _cleanup(): flip each live buffer's status under its lock
    and notify importers; returns the buffers that changed."""
    changed = []
    for buf_id in list(v.dmabufs):
        buf = B.state(system).bufs.get(buf_id)
        if buf is None or buf.released:
            continue
        priv: VfioPciDmaBuf = buf.priv
        want = DmaBufStatus.PERM_REVOKED if permanent else (
            DmaBufStatus.TEMP_REVOKED if revoked else DmaBufStatus.OK)
        if priv.status == DmaBufStatus.PERM_REVOKED or priv.status == want:
            continue
        B.dma_resv_lock(system, buf_id, "vfio")
        priv.status = want
        if permanent:
            priv.vdev = None
            v.dmabufs.remove(buf_id)
        B.dma_buf_move_notify(system, buf_id)  # both ways: a restored buffer may have moved too
        B.dma_resv_unlock(system, buf_id, "vfio")
        changed.append(buf_id)
    return changed


def _revoke(system: System, v: VfioDevice, reason: str, permanent: bool = False) -> bool:
    """Revoke every buffer, then wait for their fences. True when the BAR may go now; False when
    the operation waits (it completes from the fence-signal hook)."""
    system.log(f"vfio revoke {v.bdf} ({reason})")
    bufs = _move(system, v, True, permanent)
    bufs = list(dict.fromkeys(bufs + [b for p in v.pending for b in p.bufs]))
    fences = [(b, f.id) for b in bufs for f in B.state(system).bufs[b].resv.unsignaled()]
    if fences and v.wait_for_fences:
        v.pending.append(PendingRevoke(reason, bufs, fences))
        system.log(f"vfio {v.bdf}: {reason} waits for {len(fences)} fence(s)")
        return False
    return True


def revoke_done(system: System, bdf: str) -> bool:
    """Whether no revoke of this device is waiting for fences."""
    v = _st(system).devices.get(bdf)
    return v is None or not v.pending


def _finish(system: System, v: VfioDevice, reason: str) -> None:
    """The part after the wait: the BAR really goes (or the device really resets). Completing
    while a fence of a revoked buffer is unsignalled is recorded as an event the checker reads."""
    early = [b for b in _revoked_bufs(system, v) if B.state(system).bufs[b].resv.unsignaled()]
    if early:
        system.ext.setdefault("events", []).append(("revoke-early", v.bdf, reason, tuple(early)))
        system.log(f"vfio {v.bdf}: {reason} completes with unsignalled fences on {early}")
    if reason == "decode-off":
        v.command &= ~PCI_COMMAND_MEMORY
    elif reason == "reset":
        v.resets += 1
        # pci_try_reset_function(): FLR, then restore; memory decode comes back as it was.
        if memory_enabled(v):
            _move(system, v, False)
    elif reason == "close":
        v.command &= ~PCI_COMMAND_MEMORY
        v.is_open = False
    system.log(f"vfio {v.bdf}: {reason} done")
    if reason == "close" and v.unbind_after_close and v.bdf in system.bindings:
        if system.unbind(v.bdf) and v.unplug_after_unbind:
            system.ext.setdefault("unplugged", set()).add(v.bdf)
            system.log(f"unplug {v.bdf} done")


def _revoked_bufs(system: System, v: VfioDevice) -> list[int]:
    out = []
    for b in B.state(system).bufs.values():
        priv = b.priv
        if isinstance(priv, VfioPciDmaBuf) and priv.provider.owner == v.bdf and not b.released:
            if priv.status != DmaBufStatus.OK:
                out.append(b.id)
    return out


def _signaled(system: System, buf: int, fence: int) -> bool:
    return all(f.id != fence for f in B.state(system).bufs[buf].resv.unsignaled())


def _fence_hook(system: System, buf_id: int) -> None:
    for v in list(_st(system).devices.values()):
        for p in list(v.pending):
            if all(_signaled(system, b, f) for b, f in p.fences):
                v.pending.remove(p)
                _finish(system, v, p.reason)
        while not v.pending and v.queued:
            op = v.queued.pop(0)
            system.log(f"vfio {v.bdf}: {op} proceeds (memory_lock free)")
            try:
                _QUEUED_OPS[op](system, v.bdf)
            except KernelError as exc:
                system.log(f"vfio {v.bdf}: {op} failed: {exc}")


def _blocked(system: System, v: VfioDevice, op: str) -> bool:
    """The memory_lock is held by a revoke that waits: ``op`` blocks behind it (queued)."""
    if v.pending:
        v.queued.append(op)
        system.log(f"vfio {v.bdf}: {op} blocks on memory_lock")
        return True
    return False


B.FENCE_HOOKS.append(_fence_hook)


def vfio_set_memory(system: System, bdf: str, enable: bool) -> bool:
    """A config write of the command register's memory bit. Disabling revokes every buffer first
    (and waits); enabling un-revokes them. True when done, False when waiting for fences."""
    v = vdev_of(system, bdf)
    if _blocked(system, v, "decode-on" if enable else "decode-off"):
        return False
    if enable:
        v.command |= PCI_COMMAND_MEMORY
        _move(system, v, False)
        system.log(f"vfio {bdf}: memory decode on")
        return True
    if not memory_enabled(v):
        return True
    if _revoke(system, v, "decode-off"):
        _finish(system, v, "decode-off")
        return True
    return False


def vfio_reset(system: System, bdf: str) -> bool:
    """VFIO_DEVICE_RESET: revoke, wait, reset the function, un-revoke when memory is enabled."""
    v = vdev_of(system, bdf)
    if _blocked(system, v, "reset"):
        return False
    if _revoke(system, v, "reset"):
        _finish(system, v, "reset")
        return True
    return False


def vfio_close(system: System, bdf: str) -> bool:
    """Close the device: every buffer revoked for good (vfio_pci_dma_buf_cleanup()), then the
    device is disabled."""
    v = vdev_of(system, bdf)
    if _blocked(system, v, "close"):
        return False
    v.registered = False
    if _revoke(system, v, "close", permanent=True):
        _finish(system, v, "close")
        return True
    return False


def vfio_unbind(system: System, bdf: str) -> bool:
    """Unbind vfio-pci from the device: an open device is closed first (its buffers revoked for
    good, waiting for fences), and only then does the driver let go of its providers, as
    vfio_pci_core_unregister_device() waits for users. True when the unbind completed."""
    v = _st(system).devices.get(bdf)
    if v is not None and v.is_open:
        v.unbind_after_close = True
        if not vfio_close(system, bdf):
            return False
        return bdf not in system.bindings
    return system.unbind(bdf)


def vfio_unplug(system: System, bdf: str) -> bool:
    """An orderly hot-unplug (pciehp, sysfs remove): the driver's remove runs first (vfio closes,
    revokes and waits), then the device is gone. True when it is gone already."""
    v = _st(system).devices.get(bdf)
    if v is not None and v.is_open:
        v.unplug_after_unbind = True
    done = vfio_unbind(system, bdf)
    if done:
        system.ext.setdefault("unplugged", set()).add(bdf)
        system.log(f"unplug {bdf} done")
    return done


_QUEUED_OPS = {
    "decode-on": lambda s, b: vfio_set_memory(s, b, True),
    "decode-off": lambda s, b: vfio_set_memory(s, b, False),
    "reset": lambda s, b: vfio_reset(s, b),
    "close": lambda s, b: vfio_close(s, b),
}


def buffer_status(system: System, buf_id: int) -> DmaBufStatus:
    """The vfio status of an exported buffer."""
    priv = B.state(system).bufs[buf_id].priv
    assert isinstance(priv, VfioPciDmaBuf)
    return priv.status


def bar_accessible(system: System, bdf: str) -> bool:
    """Whether the device's BARs decode right now (vfio: memory bit set and not closed)."""
    v = _st(system).devices.get(bdf)
    if v is None:
        return True
    return v.is_open and memory_enabled(v)


fast_copy(VfioPciDmaBuf, PendingRevoke, VfioDevice, VfioState)
