"""dma-buf: buffers with exporter ops, a reservation object with fences, attachments (static and
dynamic), mapping under the reservation lock, and move_notify / invalidation.

Mirrors drivers/dma-buf/dma-buf.c, drivers/dma-buf/dma-resv.c, dma_buf_phys_vec_to_sgt() of
drivers/dma-buf/dma-buf-mapping.c and include/linux/dma-buf.h. Exporters and importers are looked
up by name in registries of code (so the state holds only data and can be copied and hashed).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from p2pdma.errors import KernelError
from p2pdma.model import dma as D
from p2pdma.model.provider import P2pdmaProvider, pci_p2pdma_bus_addr_map, pci_p2pdma_map_type
from p2pdma.model.system import System, fast_copy
from p2pdma.p2p.decide import MapType


class ResvUsage(IntEnum):
    """``enum dma_resv_usage``: what a fence is for (BOOKKEEP is waited on by everyone)."""

    def __deepcopy__(self, memo: object) -> ResvUsage:
        return self  # members are constants: copies share them

    KERNEL = 0
    WRITE = 1
    READ = 2
    BOOKKEEP = 3


@dataclass(slots=True)
class Fence:
    """A ``dma_fence``: an operation in flight, signalled when it completes."""

    id: int
    owner: str
    usage: ResvUsage
    signaled: bool = False


@dataclass(slots=True)
class DmaResv:
    """``struct dma_resv``: the lock (who holds it) and the fences."""

    holder: str | None = None
    fences: list[Fence] = field(default_factory=list)

    def unsignaled(self, usage: ResvUsage = ResvUsage.BOOKKEEP) -> list[Fence]:
        """Fences not yet signalled of ``usage`` or stricter (as dma_resv_wait_timeout() waits)."""
        return [f for f in self.fences if not f.signaled and f.usage <= usage]


@dataclass(slots=True)
class SgTable:
    """What dma_buf_map_attachment() returns: DMA address ranges for the importer's device."""

    entries: list[tuple[int, int]]
    map_type: MapType
    phys: list[tuple[int, int]]
    iova: D.DmaIovaState | None = None
    mapped: list[tuple[int, int]] = field(default_factory=list)  # dma_map_phys() results


@dataclass(slots=True)
class Attachment:
    """``struct dma_buf_attachment``; ``importer`` names dynamic importer ops (None: static)."""

    id: int
    dmabuf: int
    dev: str
    importer: str | None
    importer_priv: Any
    peer2peer: bool
    sgts: list[SgTable] = field(default_factory=list)  # every live mapping, oldest first
    pinned: bool = False
    invalidated: bool = False  # invalidate_mappings delivered since the last map

    @property
    def sgt(self) -> SgTable | None:
        """The newest live mapping (None when unmapped)."""
        return self.sgts[-1] if self.sgts else None


@dataclass(slots=True)
class DmaBuf:
    """``struct dma_buf``: size, exporter (ops by name), its private data, resv, attachments."""

    id: int
    size: int
    exporter: str
    priv: Any
    file_flags: int  # f_flags of the file: O_ACCMODE | O_NONBLOCK of what the exporter asked
    fd_cloexec: bool = False
    resv: DmaResv = field(default_factory=DmaResv)
    attachments: list[int] = field(default_factory=list)
    file_refs: int = 1
    released: bool = False


class ExporterOps(Protocol):
    """``struct dma_buf_ops`` (the parts the model needs). ``pin`` / ``unpin`` are optional (an
    exporter without them, like vfio-pci in 7.2, is not dynamic and dma_buf_pin() returns 0)."""

    def attach(self, system: System, buf: DmaBuf, att: Attachment) -> None: ...
    def detach(self, system: System, buf: DmaBuf, att: Attachment) -> None: ...
    def map(self, system: System, att: Attachment, direction: D.DmaDirection) -> SgTable: ...
    def unmap(self, system: System, att: Attachment, sgt: SgTable, direction: D.DmaDirection) -> None: ...
    def release(self, system: System, buf: DmaBuf) -> None: ...


# name -> exporter ops object; name -> importer ops' invalidate_mappings(system, attachment),
# None for importer ops without that callback (dma_buf_attach_revocable() is then false)
EXPORTERS: dict[str, ExporterOps] = {}
IMPORTERS: dict[str, Callable[[System, Attachment], None] | None] = {}


class ResvWouldBlock(KernelError):
    """dma_resv_lock() sleeps: another context holds the lock. The caller's operation has not
    happened; it can run once the holder unlocks (a model of waiting, never an errno)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EAGAIN)


@dataclass(slots=True)
class DmaBufState:
    """All dma-bufs and attachments of a System, by id."""

    bufs: dict[int, DmaBuf] = field(default_factory=dict)
    atts: dict[int, Attachment] = field(default_factory=dict)


def state(system: System) -> DmaBufState:
    st = system.ext.get("dmabuf")
    if st is None:
        st = system.ext["dmabuf"] = DmaBufState()
    assert isinstance(st, DmaBufState)
    return st


def get_buf(system: System, buf_id: int) -> DmaBuf:
    """The buffer behind an fd-like id; EBADF when unknown or released."""
    b = state(system).bufs.get(buf_id)
    if b is None or b.released:
        raise KernelError(f"no dma-buf {buf_id}", errno.EBADF)
    return b


def get_att(system: System, att_id: int) -> Attachment:
    a = state(system).atts.get(att_id)
    if a is None:
        raise KernelError(f"no attachment {att_id}", errno.EINVAL)
    return a


def _ops(buf: DmaBuf) -> ExporterOps:
    return EXPORTERS[buf.exporter]


def dma_buf_is_dynamic(buf: DmaBuf) -> bool:
    """Mirrors dma_buf_is_dynamic() (include/linux/dma-buf.h, 7.2): the exporter has .pin."""
    return hasattr(_ops(buf), "pin")


def dma_buf_attachment_is_dynamic(att: Attachment) -> bool:
    """Mirrors dma_buf_attachment_is_dynamic(): the importer passed importer ops."""
    return att.importer is not None


def dma_buf_attach_revocable(att: Attachment) -> bool:
    """Mirrors dma_buf_attach_revocable() (drivers/dma-buf/dma-buf.c, 7.2): importer ops with an
    invalidate_mappings callback."""
    return att.importer is not None and IMPORTERS.get(att.importer) is not None


# -- the reservation lock -----------------------------------------------------------------------
def dma_resv_lock(system: System, buf_id: int, who: str) -> None:
    """Mirrors dma_resv_lock() (drivers/dma-buf/dma-resv.c, 7.2): a ww_mutex. EDEADLK when ``who``
    holds it already; when another context holds it the caller sleeps (ResvWouldBlock)."""
    b = get_buf(system, buf_id)
    if b.resv.holder == who:
        raise KernelError(f"{who} already holds the lock of dma-buf {buf_id}", errno.EDEADLK)
    if b.resv.holder is not None:
        raise ResvWouldBlock(f"dma-buf {buf_id} is locked by {b.resv.holder}: {who} waits")
    b.resv.holder = who


def dma_resv_unlock(system: System, buf_id: int, who: str) -> None:
    b = get_buf(system, buf_id)
    if b.resv.holder != who:
        system.violate("locking", f"{who} unlocks dma-buf {buf_id} held by {b.resv.holder}", raise_it=False)
    b.resv.holder = None
    for hook in UNLOCK_HOOKS:  # contexts sleeping in dma_resv_lock() wake up
        hook(system, buf_id)


# code run after a reservation lock is released (a context that slept on it runs)
UNLOCK_HOOKS: list[Callable[[System, int], None]] = []


def dma_resv_assert_held(system: System, buf: DmaBuf, what: str) -> None:
    """Mirrors dma_resv_assert_held(): lockdep complains (a recorded violation) and we go on."""
    if buf.resv.holder is None:
        system.violate("locking", f"{what} on dma-buf {buf.id} without its reservation lock", raise_it=False)


def dma_resv_add_fence(system: System, buf_id: int, owner: str, usage: ResvUsage = ResvUsage.BOOKKEEP) -> int:
    """An operation in flight: an unsignalled fence in the buffer's reservation object. Mirrors
    dma_resv_add_fence() (7.2), which needs the reservation lock (lockdep: a locking violation)."""
    b = get_buf(system, buf_id)
    dma_resv_assert_held(system, b, "dma_resv_add_fence")
    f = Fence(system.handle(), owner, usage)
    b.resv.fences.append(f)
    return f.id


DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE


def dma_buf_import_sync_file(system: System, buf_id: int, flags: int, owner: str = "sync_file") -> int:
    """DMA_BUF_IOCTL_IMPORT_SYNC_FILE with an unsignalled fence (e.g. from vgem): the fence joins the
    buffer's reservation as WRITE (DMA_BUF_SYNC_WRITE set) or READ usage, under the lock. Mirrors
    dma_buf_import_sync_file() (drivers/dma-buf/dma-buf.c, 7.2); EINVAL for unknown or no flags.
    Sleeps (ResvWouldBlock) while the lock is held elsewhere. Returns the fence id."""
    get_buf(system, buf_id)
    if flags & ~DMA_BUF_SYNC_RW or not flags & DMA_BUF_SYNC_RW:
        raise KernelError(f"sync_file flags {flags:#x}", errno.EINVAL)
    usage = ResvUsage.WRITE if flags & DMA_BUF_SYNC_WRITE else ResvUsage.READ
    dma_resv_lock(system, buf_id, owner)
    try:
        return dma_resv_add_fence(system, buf_id, owner, usage)
    finally:
        dma_resv_unlock(system, buf_id, owner)


def dma_fence_signal(system: System, buf_id: int, fence_id: int) -> None:
    """Mirrors dma_fence_signal(); signalling twice is an error (EINVAL)."""
    b = state(system).bufs.get(buf_id)
    if b is None:
        raise KernelError(f"no dma-buf {buf_id}", errno.EBADF)
    for f in b.resv.fences:
        if f.id == fence_id:
            if f.signaled:
                raise KernelError(f"fence {fence_id} already signalled", errno.EINVAL)
            f.signaled = True
            b.resv.fences = [x for x in b.resv.fences if not x.signaled]
            system.log(f"dma_fence_signal dma-buf {buf_id} fence {fence_id}")
            for hook in FENCE_HOOKS:
                hook(system, buf_id)
            return
    raise KernelError(f"no fence {fence_id} on dma-buf {buf_id}", errno.EINVAL)


# code run after a fence signals (an exporter waiting in dma_resv_wait_timeout() wakes up)
FENCE_HOOKS: list[Callable[[System, int], None]] = []


# -- export, attach, map --------------------------------------------------------------------------
def dma_buf_export(system: System, exporter: str, size: int, priv: Any, flags: int = 0) -> DmaBuf:
    """Mirrors dma_buf_export() (+ dma_buf_fd()), 7.2: a new buffer with one file reference; the
    file keeps only O_ACCMODE | O_NONBLOCK of ``flags`` (dma_buf_getfile()), O_CLOEXEC goes to
    the fd (get_unused_fd_flags()); an exporter with only one of pin/unpin is EINVAL."""
    if exporter not in EXPORTERS:
        raise KernelError(f"no exporter {exporter}", errno.EINVAL)
    ops = EXPORTERS[exporter]
    if hasattr(ops, "pin") != hasattr(ops, "unpin"):
        raise KernelError(f"exporter {exporter} has pin without unpin", errno.EINVAL)
    if size <= 0:
        raise KernelError("dma-buf of no size", errno.EINVAL)
    b = DmaBuf(id=system.handle(), size=size, exporter=exporter, priv=priv, file_flags=flags & (0o3 | 0o4000),
               fd_cloexec=bool(flags & 0o2000000))
    state(system).bufs[b.id] = b
    system.log(f"dma_buf_export {exporter} {size:#x} -> dma-buf {b.id}")
    return b


def dma_buf_dynamic_attach(
    system: System, buf_id: int, dev: str, importer: str | None, importer_priv: Any = None,
    allow_peer2peer: bool = True,
) -> Attachment:
    """Attach a device. Mirrors dma_buf_dynamic_attach() / dma_buf_attach() (importer None):
    ``peer2peer`` comes only from importer ops (7.2: importer ops need not have
    invalidate_mappings; exporters that revoke refuse those through dma_buf_attach_revocable())."""
    b = get_buf(system, buf_id)
    system.device(dev)
    if importer is not None and importer not in IMPORTERS:
        raise KernelError(f"no importer ops named {importer}", errno.EINVAL)
    a = Attachment(
        id=system.handle(), dmabuf=buf_id, dev=dev, importer=importer, importer_priv=importer_priv,
        peer2peer=allow_peer2peer if importer is not None else False,
    )
    _ops(b).attach(system, b, a)
    state(system).atts[a.id] = a
    b.attachments.append(a.id)
    system.log(f"dma_buf_attach dma-buf {buf_id} {dev} {importer or 'static'} -> attachment {a.id}")
    return a


def dma_buf_detach(system: System, att_id: int) -> None:
    """Mirrors dma_buf_detach(); detaching with a live mapping is a leak the kernel warns about."""
    a = get_att(system, att_id)
    b = state(system).bufs[a.dmabuf]
    if a.sgts:
        system.violate("leak", f"attachment {att_id} detached with its mapping still live", raise_it=False)
    _ops(b).detach(system, b, a)
    b.attachments.remove(att_id)
    del state(system).atts[att_id]
    system.log(f"dma_buf_detach attachment {att_id}")


def dma_buf_pin(system: System, att_id: int) -> int:
    """Mirrors dma_buf_pin() (7.2): under the lock; the exporter's .pin when it has one, else 0
    (vfio-pci has no .pin in 7.2, so pinning its buffer succeeds and pins nothing)."""
    a = get_att(system, att_id)
    b = state(system).bufs[a.dmabuf]
    dma_resv_assert_held(system, b, "dma_buf_pin")
    ops: Any = _ops(b)
    if hasattr(ops, "pin"):
        ops.pin(system, a)
    a.pinned = True
    return 0


def dma_buf_unpin(system: System, att_id: int) -> None:
    a = get_att(system, att_id)
    b = state(system).bufs[a.dmabuf]
    dma_resv_assert_held(system, b, "dma_buf_unpin")
    ops: Any = _ops(b)
    if hasattr(ops, "unpin"):
        ops.unpin(system, a)
    a.pinned = False


BIDI = D.DmaDirection.BIDIRECTIONAL


def dma_buf_map_attachment(system: System, att_id: int, direction: D.DmaDirection = BIDI) -> SgTable:
    """Map for the importer's device. Mirrors dma_buf_map_attachment() (7.2): the caller holds the
    reservation lock (checked); every call maps again (no caching, no EBUSY: a second map is a
    second table); a static importer of an exporter with .pin pins first (pin-on-map) and
    waits for the KERNEL fences after the map (it sleeps while one is unsignalled)."""
    a = get_att(system, att_id)
    b = get_buf(system, a.dmabuf)
    dma_resv_assert_held(system, b, "dma_buf_map_attachment")
    static = not dma_buf_attachment_is_dynamic(a)
    if static and b.resv.unsignaled(ResvUsage.KERNEL):
        raise ResvWouldBlock(f"static importer of dma-buf {b.id} waits for kernel fences")
    pin_on_map = static and dma_buf_is_dynamic(b)
    if pin_on_map:
        dma_buf_pin(system, att_id)
    try:
        sgt = _ops(b).map(system, a, direction)
    except KernelError:
        if pin_on_map:
            dma_buf_unpin(system, att_id)
        raise
    a.sgts.append(sgt)
    a.invalidated = False
    system.log(f"dma_buf_map_attachment {att_id} -> {sgt.map_type.name}")
    return sgt


def dma_buf_unmap_attachment(system: System, att_id: int, direction: D.DmaDirection = BIDI) -> None:
    """Mirrors dma_buf_unmap_attachment() (7.2) on the newest mapping; unmapping what is not
    mapped is EINVAL."""
    a = get_att(system, att_id)
    b = state(system).bufs[a.dmabuf]
    dma_resv_assert_held(system, b, "dma_buf_unmap_attachment")
    if not a.sgts:
        raise KernelError(f"attachment {att_id} is not mapped", errno.EINVAL)
    sgt = a.sgts.pop()
    _ops(b).unmap(system, a, sgt, direction)
    if a.importer is None and dma_buf_is_dynamic(b) and a.pinned:
        dma_buf_unpin(system, att_id)
    system.log(f"dma_buf_unmap_attachment {att_id}")


def dma_buf_invalidate_mappings(system: System, buf_id: int) -> None:
    """Tell every importer with an invalidate_mappings callback that its mappings are going away.
    Mirrors dma_buf_invalidate_mappings() (7.2; 6.x called it dma_buf_move_notify()): under the
    reservation lock; importers without the callback are not called."""
    b = get_buf(system, buf_id) if buf_id in state(system).bufs else None
    if b is None:
        return
    dma_resv_assert_held(system, b, "dma_buf_move_notify")
    for att_id in list(b.attachments):
        a = state(system).atts[att_id]
        cb = IMPORTERS.get(a.importer) if a.importer is not None else None
        if cb is not None:
            a.invalidated = True
            system.log(f"move_notify attachment {att_id} ({a.importer})")
            cb(system, a)


dma_buf_move_notify = dma_buf_invalidate_mappings  # the 6.x name


def dma_buf_put(system: System, buf_id: int) -> None:
    """Drop a file reference (close the fd); the last one releases the buffer. Mirrors dma_buf_put()."""
    b = get_buf(system, buf_id)
    b.file_refs -= 1
    if b.file_refs == 0:
        if b.attachments:
            system.violate("leak", f"dma-buf {buf_id} released with {len(b.attachments)} attachment(s)",
                           raise_it=False)
        _ops(b).release(system, b)
        b.released = True
        system.log(f"dma_buf_release {buf_id}")


# -- the phys-vec helper exporters of MMIO use -----------------------------------------------------
def dma_buf_phys_vec_to_sgt(
    system: System, att: Attachment, provider: P2pdmaProvider, phys: list[tuple[int, int]], size: int,
    direction: D.DmaDirection,
) -> SgTable:
    """Map MMIO ranges for an attachment by the provider's map type. Mirrors
    dma_buf_phys_vec_to_sgt() (drivers/dma-buf/dma-buf-mapping.c, 7.2): bus addresses for
    BUS_ADDR, one IOVA range (or dma_map_phys() per range) for THRU_HOST_BRIDGE, EINVAL when the
    path is not supported. Like 7.2 it links every range at IOVA offset 0 (not at the running
    offset): with more than one range the second link lands on the first (the IOMMU refuses it,
    EADDRINUSE, generic_pt) — the kernel's own defect, recorded as a finding rather than
    silently fixed."""
    kind = pci_p2pdma_map_type(system, provider, att.dev)
    if kind == MapType.BUS_ADDR:
        entries = [(pci_p2pdma_bus_addr_map(system, provider, p), n) for p, n in phys]
        return SgTable(entries, kind, list(phys))
    if kind != MapType.THRU_HOST_BRIDGE:
        raise KernelError(f"{att.dev} cannot reach {provider.owner} peer-to-peer", errno.EINVAL)
    st = D.DmaIovaState()
    if phys and D.dma_iova_try_alloc(system, att.dev, st, 0, size):
        mapped_len = 0
        if len(phys) > 1:
            system.ext.setdefault("findings", []).append(
                (FINDING_IOVA_OFFSET, att.dmabuf, f"dma-buf {att.dmabuf}: {len(phys)} ranges linked at IOVA "
                 f"offset 0 for {att.dev} (dma_buf_phys_vec_to_sgt(), 7.2)"))
        try:
            for p, n in phys:
                D.dma_iova_link(system, att.dev, st, p, 0, n, direction, D.DMA_ATTR_MMIO)  # 7.2: offset 0
                mapped_len += n
        except KernelError:
            D.dma_iova_destroy(system, att.dev, st, mapped_len, direction, D.DMA_ATTR_MMIO)
            raise
        D.dma_iova_sync(system, att.dev, st, 0, mapped_len)
        return SgTable([(st.addr, mapped_len)], kind, list(phys), iova=st)
    mapped: list[tuple[int, int]] = []
    try:
        for p, n in phys:
            mapped.append((D.dma_map_phys(system, att.dev, p, n, direction, D.DMA_ATTR_MMIO), n))
    except KernelError:
        for addr, n in mapped:
            D.dma_unmap_phys(system, att.dev, addr, n, direction, D.DMA_ATTR_MMIO)
        raise
    return SgTable(list(mapped), kind, list(phys), mapped=list(mapped))


FINDING_IOVA_OFFSET = "kernel-defect:phys-vec-iova-offset"


def dma_buf_free_sgt(system: System, att: Attachment, sgt: SgTable, direction: D.DmaDirection) -> None:
    """Undo dma_buf_phys_vec_to_sgt(). Mirrors dma_buf_free_sgt()."""
    if sgt.iova is not None:
        D.dma_iova_destroy(system, att.dev, sgt.iova, sgt.entries[0][1], direction, D.DMA_ATTR_MMIO)
    for addr, n in sgt.mapped:
        D.dma_unmap_phys(system, att.dev, addr, n, direction, D.DMA_ATTR_MMIO)


fast_copy(Fence, DmaResv, SgTable, Attachment, DmaBuf, DmaBufState)
