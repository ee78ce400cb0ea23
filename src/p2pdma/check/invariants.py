"""The lifetime rules the checker proves, each a named predicate with a one-line statement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from p2pdma.check.models import ModelSpec, cstate
from p2pdma.model import dma as D
from p2pdma.model import dmabuf as B
from p2pdma.model import importers as I
from p2pdma.model import vfio as V
from p2pdma.model.system import System


@dataclass(frozen=True)
class Invariant:
    """A rule: its name, what it says, and a predicate that returns a reason when broken."""

    name: str
    statement: str
    broken: Callable[[ModelSpec, System], str | None]
    kind: str = "safety"  # safety: no reachable state breaks it; liveness: every wait can end


def _sanitizer(spec: ModelSpec, s: System) -> str | None:
    bad = [v for v in s.violations if v.kind in ("sanitizer", "use-after-release", "free-after-release")]
    return bad[0].message if bad else None


def _revoke_waits(spec: ModelSpec, s: System) -> str | None:
    for ev in s.ext.get("events", []):
        if ev[0] == "revoke-early":
            return (f"{ev[2]} of {ev[1]} went on while dma-buf(s) {list(ev[3])} had unsignalled fences or "
                    "live mappings")
    return None


def _no_usable_buffer_while_off(spec: ModelSpec, s: System) -> str | None:
    """Un-revoke and export are serialised with revokes: no buffer on the device's list is usable
    (not revoked) while its memory does not decode, unless the op that changes that is running."""
    for v in V._st(s).devices.values():
        if not v.is_open or V.memory_enabled(v) or v.busy is not None:
            continue
        for b in v.dmabufs:
            buf = B.state(s).bufs.get(b)
            if buf is not None and not buf.released and not buf.priv.revoked:
                return f"dma-buf {b} of {v.bdf} is usable while its memory decode is off"
    return None


def _unrevoke_waits(spec: ModelSpec, s: System) -> str | None:
    for ev in s.ext.get("events", []):
        if ev[0] == "unrevoke-early":
            return f"{ev[2]} of {ev[1]} made dma-buf(s) {list(ev[3])} usable again before their fences signalled"
    return None


def blocked_ops(s: System) -> list[str]:
    """The vfio operations that have not returned (inside or queued for memory_lock)."""
    return [f"{op.reason} of {v.bdf} (waits for {op.waiting})" for v in V._st(s).devices.values()
            for op in v.pending]


def _revoke_completes(spec: ModelSpec, s: System) -> str | None:
    """The liveness rule's state predicate: a state where an operation is blocked. The explorer
    reports it only when no continuation from the state lets every blocked operation finish."""
    ops = blocked_ops(s)
    return f"{ops[0]} never completes: no continuation lets it finish" if ops else None


def _no_mapping_after_revoke(spec: ModelSpec, s: System) -> str | None:
    st = B.state(s)
    for buf in st.bufs.values():
        priv = buf.priv
        if not isinstance(priv, V.VfioPciDmaBuf) or priv.status == V.DmaBufStatus.OK:
            continue
        v = V._st(s).devices.get(priv.provider.owner)
        if v is not None and any(buf.id in p.bufs for p in v.pending):
            continue  # the revoke has not completed yet
        for att_id in buf.attachments:
            a = st.atts[att_id]
            if a.sgt is not None:
                return f"attachment of {a.dev} still maps dma-buf {buf.id} after its revoke completed"
    return None


def _provider_outlives_dma(spec: ModelSpec, s: System) -> str | None:
    released = s.ext.get("released_bars", set())
    if not released:
        return None
    c = cstate(s)
    if (spec.owner, spec.bar) in released:
        if any(c.peer_inflight):
            return f"{spec.owner} BAR{spec.bar}'s provider was released while a peer's DMA to it is in flight"
        for op in I.state(s).inflight.values():
            return f"{spec.owner} BAR{spec.bar}'s provider was released while DMA {op.id} is in flight"
    return None


def _locking(spec: ModelSpec, s: System) -> str | None:
    bad = [v for v in s.violations if v.kind == "locking"]
    return bad[0].message if bad else None


def _no_leak_after_close(spec: ModelSpec, s: System) -> str | None:
    v = V._st(s).devices.get(spec.owner)
    closed = v is not None and not v.is_open and not v.pending
    if not closed:
        return None
    c = cstate(s)
    if any(x not in (None, -1) for x in c.imports):
        return None  # importers still hold the buffer; they may release later
    st = B.state(s)
    for buf in st.bufs.values():
        if buf.attachments:
            return f"dma-buf {buf.id} keeps {len(buf.attachments)} attachment(s) after close"
    dbg = s.dma_debug
    if isinstance(dbg, D.DmaDebug) and dbg.live:
        return f"{len(dbg.live)} DMA mapping(s) live after close"
    iommu = s.iommu
    if isinstance(iommu, D.Iommu):
        for dom in iommu.domains.values():
            if dom.iova.live:
                return f"{len(dom.iova.live)} IOVA range(s) still allocated in group {dom.group} after close"
    pages = s.ext.get("pages")
    if pages is not None and pages.mappings:
        return f"{len(pages.mappings)} p2pmem user mapping(s) after close"
    return None


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("sanitizer-clean", "no DMA touches memory it may no longer touch", _sanitizer),
    Invariant("revoke-waits", "a revoke completes only after every fence signalled and every mapping was "
              "unmapped (7.2: dma_resv_wait_timeout(), then the kref's completion)", _revoke_waits),
    Invariant("no-mapping-after-revoke", "no mapping survives a completed revoke", _no_mapping_after_revoke),
    Invariant("provider-outlives-dma", "no provider is released while any DMA to it is live",
              _provider_outlives_dma),
    Invariant("resv-locking", "mapping and invalidation happen under the reservation lock", _locking),
    Invariant("no-leak-after-close", "after close nothing leaks (attachments, mappings, IOVAs, pages)",
              _no_leak_after_close),
    Invariant("no-usable-buffer-while-decode-off", "no exported buffer is usable while its BAR does not decode "
              "(exports and un-revokes are serialised with revokes by memory_lock)", _no_usable_buffer_while_off),
    Invariant("unrevoke-waits", "a buffer becomes usable again only after its fences signalled", _unrevoke_waits),
)

LIVENESS: tuple[Invariant, ...] = (
    Invariant("revoke-completes", "every revoke (and every vfio operation behind it) eventually completes",
              _revoke_completes, kind="liveness"),
)


def first_broken(spec: ModelSpec, s: System) -> tuple[Invariant, str] | None:
    """The first invariant this state breaks, with the reason."""
    for inv in INVARIANTS:
        why = inv.broken(spec, s)
        if why is not None:
            return inv, why
    return None
