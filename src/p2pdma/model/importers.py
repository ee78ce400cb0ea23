"""Importers of a dma-buf, each reacting to move_notify the way its kernel counterpart does.

- ``iommufd``: imports through vfio's private interconnect, as iopt_map_dmabuf() in
  drivers/iommu/iommufd/pages.c (7.2) does: dma_buf_pin() (0: vfio has no .pin), then
  vfio_pci_dma_buf_iommufd_map() for the one physical range (EOPNOTSUPP for more), mapped into
  the VM's I/O address space; no map_dma_buf, so no kref and no P2P map-type check. On
  invalidate it unmaps the IOAS at once (iopt_revoke_notify()); the VM's later DMA faults.
- ``rdma``: a dma-buf memory region (ib_umem_dmabuf): invalidate stops new work, the mapping goes
  when in-flight work drains, and the next use maps again (ODP-style).
- ``nvme-hypothetical``: NVMe does not import dma-bufs in 7.2 (it takes P2P pages through the
  block layer, pci_p2pdma_state() per request); this names a hypothetical dma-buf importer that
  behaves like rdma (``nvme`` is accepted as its old name).
- ``ignores-invalidate`` (broken): does nothing on invalidate and keeps using its mapping.
- ``never-unmaps`` (broken): ignores invalidate and never lets go: a revoke waits for it forever.
- ``dma-past-invalidate`` (broken): never fences its DMA, so nobody waits for it.

Each DMA is two steps, start (a fence when the importer fences) and finish (the bytes move
through the fabric, the fence signals), so that revokes interleave with DMA in flight.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np

from p2pdma.errors import IommuFault, KernelError
from p2pdma.model import dma as D
from p2pdma.model import dmabuf as B
from p2pdma.model import fabric as F
from p2pdma.model import vfio as V
from p2pdma.model.system import System, fast_copy

KINDS = ("iommufd", "rdma", "nvme-hypothetical", "ignores-invalidate", "dma-past-invalidate", "never-unmaps")
BROKEN = ("ignores-invalidate", "dma-past-invalidate", "never-unmaps")
ALIASES = {"nvme": "nvme-hypothetical"}
REMAPS_ON_USE = ("rdma", "nvme-hypothetical", "dma-past-invalidate")
IGNORES = ("ignores-invalidate", "never-unmaps")


@dataclass(slots=True)
class Import:
    """One importer's hold on a buffer: its attachment and what it believes of it."""

    id: int
    kind: str
    dev: str
    buf: int
    att: int
    mapped: bool = False
    invalid: bool = False  # move_notify received, not yet re-mapped
    inflight: list[int] = field(default_factory=list)
    notified: bool = False  # deferred mode: invalidate arrived, reaction not yet run
    iommufd_map: tuple[int, int] | None = None  # iommufd: (IOVA, length) in the VM's domain
    unmap_waits: bool = False  # its unmap sleeps in dma_resv_lock() until the holder unlocks


@dataclass(slots=True)
class InFlight:
    """A DMA started but not finished: where it goes and whether it was legitimate at start."""

    id: int
    imp: int
    offset: int
    length: int
    write: bool
    data: bytes | F.Memory | None  # a write's bytes, or a sparse source read from offset 0
    addrs: list[tuple[int, int]]
    fence: int | None
    valid_at_start: bool
    invalidated: bool = False  # move_notify arrived while this DMA was in flight
    resets_at_start: int = 0  # the exporting device's reset count when it started


@dataclass(slots=True)
class ImporterState:
    imports: dict[int, Import] = field(default_factory=dict)
    inflight: dict[int, InFlight] = field(default_factory=dict)


def state(system: System) -> ImporterState:
    st = system.ext.get("importers")
    if st is None:
        st = system.ext["importers"] = ImporterState()
    assert isinstance(st, ImporterState)
    return st


def _imp_of_att(system: System, att: B.Attachment) -> Import:
    imp = att.importer_priv
    return state(system).imports[imp]


def _who(imp: Import) -> str:
    return f"{imp.kind}:{imp.id}"


def _map_locked(system: System, imp: Import) -> None:
    B.dma_resv_lock(system, imp.buf, _who(imp))
    try:
        if imp.kind == "iommufd":
            _iommufd_map(system, imp)
        else:
            B.dma_buf_map_attachment(system, imp.att)
        imp.mapped, imp.invalid = True, False
    finally:
        B.dma_resv_unlock(system, imp.buf, _who(imp))


def _iommufd_map(system: System, imp: Import) -> None:
    """Mirrors iopt_map_dmabuf() (7.2), under the lock: dma_buf_pin() (returns 0 for vfio), the
    private interconnect for the one range, then the IOAS mapping for the VM's device."""
    att = B.get_att(system, imp.att)
    B.dma_buf_pin(system, imp.att)
    try:
        paddr, length = V.vfio_pci_dma_buf_iommufd_map(system, att)
    except KernelError:
        B.dma_buf_unpin(system, imp.att)
        raise
    iova = D.dma_map_phys(system, imp.dev, paddr, length, D.DmaDirection.BIDIRECTIONAL, D.DMA_ATTR_MMIO)
    imp.iommufd_map = (iova, length)
    att.invalidated = False


def _iommufd_unmap(system: System, imp: Import) -> None:
    """iopt_area_unmap_domain_range(): the IOAS no longer maps the buffer."""
    if imp.iommufd_map is not None:
        iova, length = imp.iommufd_map
        D.dma_unmap_phys(system, imp.dev, iova, length, D.DmaDirection.BIDIRECTIONAL, D.DMA_ATTR_MMIO)
        imp.iommufd_map = None


def _unmap(system: System, imp: Import, locked_by_exporter: bool) -> None:
    """Drop the mapping; under the exporter's lock inside invalidate, else taking it (the caller
    sleeps, ResvWouldBlock, while someone else holds it)."""
    if not imp.mapped:
        return
    if imp.kind == "iommufd":
        _iommufd_unmap(system, imp)  # under pages->mutex, not the reservation lock
        imp.mapped = False
        return
    if not locked_by_exporter:
        B.dma_resv_lock(system, imp.buf, _who(imp))
    try:
        B.dma_buf_unmap_attachment(system, imp.att)
        imp.mapped = False  # before the unlock: a woken revoke sees it unmapped
    finally:
        if not locked_by_exporter:
            B.dma_resv_unlock(system, imp.buf, _who(imp))


def _on_move(system: System, att: B.Attachment) -> None:
    """invalidate_mappings. Immediate mode reacts inside the callback; deferred mode (the
    checker's) only records it, so the reaction is a step of its own."""
    imp = _imp_of_att(system, att)
    system.log(f"importer {imp.id} ({imp.kind}) invalidated")
    for op_id in imp.inflight:  # the sanitizer's bookkeeping: these must finish before the BAR goes
        state(system).inflight[op_id].invalidated = True
    if imp.kind in IGNORES:
        return
    if imp.kind == "iommufd":  # iopt_revoke_notify() unmaps inside the callback
        imp.invalid = True
        _unmap(system, imp, locked_by_exporter=True)
        return
    if system.ext.get("deferred_invalidate"):
        imp.notified = True
        return
    imp.invalid = True
    if not imp.inflight:
        _unmap(system, imp, locked_by_exporter=True)


def _unmap_or_sleep(system: System, imp: Import) -> None:
    """Unmap now, or (lock held elsewhere) sleep on the lock and unmap when it is released."""
    if imp.mapped and B.get_buf(system, imp.buf).resv.holder is not None:
        imp.unmap_waits = True
        system.log(f"importer {imp.id} ({imp.kind}) waits for the lock of dma-buf {imp.buf} to unmap")
        return
    _unmap(system, imp, locked_by_exporter=False)


def _unlock_hook(system: System, buf_id: int) -> None:
    for imp in list(state(system).imports.values()):
        if imp.buf == buf_id and imp.unmap_waits and B.get_buf(system, buf_id).resv.holder is None:
            imp.unmap_waits = False
            _unmap(system, imp, locked_by_exporter=False)


B.UNLOCK_HOOKS.append(_unlock_hook)


def handle_invalidate(system: System, import_id: int) -> None:
    """Deferred mode: the importer's reaction to invalidate: stop using the mapping and unmap it
    now (or once in-flight DMA drains). Sleeps (ResvWouldBlock, nothing changed) while another
    context holds the reservation lock."""
    imp = state(system).imports.get(import_id)
    if imp is None or not imp.notified:
        raise KernelError(f"import {import_id} has no invalidation to handle", errno.EINVAL)
    holder = B.get_buf(system, imp.buf).resv.holder
    if imp.mapped and not imp.inflight and holder is not None:
        raise B.ResvWouldBlock(f"import {import_id}: dma-buf {imp.buf} is locked by {holder}")
    imp.notified = False
    imp.invalid = True
    if not imp.inflight:
        _unmap(system, imp, locked_by_exporter=False)
    system.log(f"importer {import_id} ({imp.kind}) handled the invalidation")


for _k in KINDS:
    B.IMPORTERS[_k] = _on_move


def import_buffer(system: System, kind: str, dev: str, buf_id: int, *, static: bool = False) -> int:
    """Attach ``dev`` as importer ``kind`` and map (a static importer has no invalidate_mappings:
    vfio refuses it). Returns the import id."""
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise KernelError(f"unknown importer kind {kind!r} ({', '.join(KINDS)})", errno.EINVAL)
    st = state(system)
    imp = Import(id=system.handle(), kind=kind, dev=dev, buf=buf_id, att=0)
    att = B.dma_buf_dynamic_attach(system, buf_id, dev, None if static else kind, importer_priv=imp.id)
    imp.att = att.id
    st.imports[imp.id] = imp
    try:
        _map_locked(system, imp)
    except KernelError:
        B.dma_buf_detach(system, att.id)
        del st.imports[imp.id]
        raise
    system.log(f"import {imp.id}: {kind} {dev} dma-buf {buf_id}")
    return imp.id


def mapped_via(system: System, import_id: int) -> str:
    """How the import reaches the buffer: the map type of its sg table, or for iommufd (no sg
    table: an IOAS mapping the IOMMU translates) THRU_HOST_BRIDGE; "-" when unmapped."""
    imp = state(system).imports[import_id]
    if imp.iommufd_map is not None:
        return "THRU_HOST_BRIDGE"
    att = B.get_att(system, imp.att)
    return att.sgt.map_type.name if att.sgt is not None else "-"


def _addresses(imp: Import, system: System, offset: int, length: int) -> list[tuple[int, int]]:
    att = B.get_att(system, imp.att)
    if imp.iommufd_map is not None:
        entries = [imp.iommufd_map]
    elif att.sgt is not None:
        entries = att.sgt.entries
    else:
        raise KernelError(f"import {imp.id} has no mapping", errno.EFAULT)
    out = []
    pos = 0
    want_end = offset + length
    for addr, n in entries:
        lo, hi = max(offset, pos), min(want_end, pos + n)
        if lo < hi:
            out.append((addr + lo - pos, hi - lo))
        pos += n
    if sum(n for _, n in out) != length:
        raise KernelError(f"{offset:#x}+{length:#x} outside the {pos:#x}-byte buffer", errno.EINVAL)
    return out


def start_dma(system: System, import_id: int, offset: int, length: int, *, write: bool,
              data: bytes | F.Memory | None = None) -> int:
    """Begin a DMA of ``length`` bytes at ``offset`` into the buffer (a write's data: bytes, or a
    sparse Memory whose first ``length`` bytes are sent). A correct importer refuses new work after
    invalidation (rdma/nvme re-map first; iommufd's VM faults)."""
    st = state(system)
    imp = st.imports.get(import_id)
    if imp is None:
        raise KernelError(f"no import {import_id}", errno.EINVAL)
    if write and (data is None or (not isinstance(data, F.Memory) and len(data) != length)):
        raise KernelError("a write needs exactly length bytes of data", errno.EINVAL)
    if imp.notified and imp.kind not in IGNORES:
        handle_invalidate(system, import_id)  # the importer sees the flag before new work
    if imp.invalid and imp.kind in REMAPS_ON_USE:
        if imp.inflight:
            raise KernelError(f"import {import_id} is draining after invalidation", errno.EAGAIN)
        _unmap(system, imp, locked_by_exporter=False)
        _map_locked(system, imp)  # ENODEV while revoked
    if imp.kind == "iommufd" and not imp.mapped:
        F.state(system).faults.append(f"VM DMA through import {import_id} after revoke")
        raise IommuFault(f"import {import_id}: the VM's IOAS no longer maps the buffer")
    buf = B.get_buf(system, imp.buf)
    # legitimate only through a mapping made since the last move_notify, of a buffer not revoked
    valid = not B.get_att(system, imp.att).invalidated and V.buffer_status(system, imp.buf) == V.DmaBufStatus.OK
    addrs = _addresses(imp, system, offset, length)
    fence = None
    if imp.kind != "dma-past-invalidate":
        B.dma_resv_lock(system, buf.id, _who(imp))  # dma_resv_add_fence() needs the lock
        try:
            fence = B.dma_resv_add_fence(system, buf.id, imp.kind)
        finally:
            B.dma_resv_unlock(system, buf.id, _who(imp))
    op = InFlight(system.handle(), imp.id, offset, length, write, data, addrs, fence, valid,
                  resets_at_start=_resets(system, imp))
    st.inflight[op.id] = op
    imp.inflight.append(op.id)
    system.log(f"start dma {op.id}: import {imp.id} {'write' if write else 'read'} {offset:#x}+{length:#x}")
    return op.id


def _owner(system: System, imp: Import) -> str:
    priv = B.state(system).bufs[imp.buf].priv
    assert isinstance(priv, V.VfioPciDmaBuf)
    return priv.provider.owner


def _resets(system: System, imp: Import) -> int:
    v = V._st(system).devices.get(_owner(system, imp))
    return 0 if v is None else v.resets


def finish_dma(system: System, op_id: int) -> bytes:
    """Complete a DMA (see finish_dma_sparse) and return what it read (a write: what it wrote)."""
    mem, n = finish_dma_sparse(system, op_id)
    return bytes(mem.read(0, n))


def finish_dma_sparse(system: System, op_id: int) -> tuple[F.Memory, int]:
    """Complete a DMA: the bytes move through the fabric (checked), then the fence signals. The
    sanitizer flags a DMA started through an invalidated mapping, and one that was in flight when
    its buffer was revoked if the revoke completed (the BAR went, or the device reset) before it.
    Returns the bytes moved as a sparse Memory from offset 0, and how many moved."""
    st = state(system)
    op = st.inflight.pop(op_id, None)
    if op is None:
        raise KernelError(f"no DMA {op_id} in flight", errno.EINVAL)
    imp = st.imports[op.imp]
    imp.inflight.remove(op_id)
    out = F.Memory()
    moved = 0
    unwaited = op.invalidated and (V.revoke_done(system, _owner(system, imp))
                                   or _resets(system, imp) != op.resets_at_start)
    if not op.valid_at_start:
        system.violate("sanitizer", f"DMA {op_id} by {imp.dev} ({imp.kind}) started after dma-buf {imp.buf} "
                       "was invalidated", raise_it=False)
    elif unwaited:
        system.violate("sanitizer", f"DMA {op_id} by {imp.dev} ({imp.kind}) was in flight when dma-buf "
                       f"{imp.buf} was revoked, and the revoke completed without waiting for it", raise_it=False)
    else:
        pos = 0
        for addr, n in op.addrs:
            viol = len(system.violations)
            try:
                if op.write:
                    assert op.data is not None
                    src = op.data if isinstance(op.data, F.Memory) else F.Memory()
                    if not isinstance(op.data, F.Memory):
                        src.write(0, np.frombuffer(op.data[pos : pos + n], dtype=np.uint8))
                    F.dma(system, imp.dev, addr, n, write=True, data=(src, pos if src is op.data else 0),
                          context=f"dma {op_id}")
                    if len(system.violations) == viol:
                        out.copy_from(src, pos if src is op.data else 0, moved, n)
                        moved += n
                else:
                    F.dma(system, imp.dev, addr, n, write=False, context=f"dma {op_id}", into=(out, moved))
                    if len(system.violations) == viol:
                        moved += n
            except IommuFault:
                pass
            pos += n
    if op.fence is not None:
        B.dma_fence_signal(system, imp.buf, op.fence)
    if imp.invalid and not imp.inflight and imp.kind in REMAPS_ON_USE:
        _unmap_or_sleep(system, imp)
    system.log(f"finish dma {op_id}")
    return out, moved


def remap(system: System, import_id: int) -> None:
    """Map again after an un-revoke (iommufd's userspace re-maps; others do it on next use)."""
    imp = state(system).imports[import_id]
    _unmap(system, imp, locked_by_exporter=False)
    _map_locked(system, imp)


def release(system: System, import_id: int) -> None:
    """Stop importing: unmap and detach (EBUSY while DMA is in flight)."""
    st = state(system)
    imp = st.imports.get(import_id)
    if imp is None:
        raise KernelError(f"no import {import_id}", errno.EINVAL)
    if imp.inflight:
        raise KernelError(f"import {import_id} has DMA in flight", errno.EBUSY)
    if imp.kind == "never-unmaps":
        raise KernelError(f"import {import_id} ({imp.kind}) never lets go of its mapping", errno.EBUSY)
    if imp.mapped and imp.kind != "iommufd" and B.get_buf(system, imp.buf).resv.holder is not None:
        raise B.ResvWouldBlock(f"import {import_id}: dma-buf {imp.buf} is locked")
    if imp.kind == "iommufd" and imp.mapped:
        _iommufd_unmap(system, imp)
        imp.mapped = False
    if imp.kind == "iommufd":
        B.dma_resv_lock(system, imp.buf, _who(imp))
        B.dma_buf_unpin(system, imp.att)
        B.dma_resv_unlock(system, imp.buf, _who(imp))
    _unmap(system, imp, locked_by_exporter=False)
    B.dma_buf_detach(system, imp.att)
    del st.imports[import_id]
    system.log(f"release import {import_id}")


fast_copy(Import, InFlight, ImporterState)
