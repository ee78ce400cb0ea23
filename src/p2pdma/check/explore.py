"""Breadth-first exploration of a model's states: the first counterexample found is a shortest one.

States are compared by a canonical key (object ids renamed away; interchangeable importers sorted
when symmetry reduction is on). Bounds on states and depth are reported, never silently applied.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pdma.check.invariants import INVARIANTS, LIVENESS, blocked_ops, first_broken
from p2pdma.check.models import ModelSpec, actions, cstate, initial
from p2pdma.model import dmabuf as B
from p2pdma.model import importers as I
from p2pdma.model import vfio as V
from p2pdma.model.system import System


@dataclass
class Step:
    """One step of a trace: what happened and what changed."""

    n: int
    action: str
    changes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"step": self.n, "action": self.action, "changes": self.changes}


@dataclass
class Result:
    """The verdict: holds or violated, with counts, time and (when violated) the trace."""

    model: str
    verdict: str
    invariant: str | None
    reason: str | None
    states: int
    transitions: int
    seconds: float
    depth: int
    complete: bool
    bound: str | None
    trace: list[Step] = field(default_factory=list)
    reductions: bool = True
    kind: str | None = None  # "safety" or "liveness" when violated
    liveness_checked: bool = False
    findings: list[str] = field(default_factory=list)  # the kernel's own defects met in some state

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else float(self.states)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "p2pdma.check/1",
            "model": self.model,
            "verdict": self.verdict,
            "invariant": self.invariant,
            "states": self.states,
            "seconds": round(self.seconds, 4),
            "trace": [s.to_json() for s in self.trace],
            "reason": self.reason,
            "transitions": self.transitions,
            "depth": self.depth,
            "complete": self.complete,
            "bound": self.bound,
            "symmetry_reduction": self.reductions,
            "invariants": [{"name": i.name, "statement": i.statement} for i in INVARIANTS],
            "kind": self.kind,
            "liveness": [{"name": i.name, "statement": i.statement, "checked": self.liveness_checked}
                         for i in LIVENESS],
            "findings": self.findings,
        }


def _importer_view(s: System, i: int) -> tuple[Any, ...]:
    c = cstate(s)
    imp_id = c.imports[i]
    base: tuple[Any, ...] = (c.dma_started[i], c.peer_addr[i] is not None, c.peer_inflight[i])
    if imp_id is None or imp_id == -1:
        return (imp_id is None, *base)
    imp = I.state(s).imports.get(imp_id)
    if imp is None:
        return ("gone", *base)
    ops = tuple(sorted(repr((op.valid_at_start, getattr(op, "invalidated", False),
                             getattr(op, "resets_at_start", 0)))
                       for op in (I.state(s).inflight[o] for o in imp.inflight)))
    return (imp.mapped, imp.invalid, imp.notified, imp.unmap_waits, ops, *base)


def canonical(spec: ModelSpec, s: System, symmetry: bool = True) -> tuple[Any, ...]:
    """A hashable key equal for states that behave alike from here on."""
    c = cstate(s)
    per = [(spec.importers[i], _importer_view(s, i)) for i in range(len(spec.importers))]
    if symmetry:
        per = sorted(per, key=repr)
    order = {b: n for n, b in enumerate(sorted(B.state(s).bufs))}  # buffer ids renamed by age
    vdevs = tuple(
        (v.bdf, v.command, v.is_open, v.registered, v.power_d3hot, v.pm_runtime_engaged, v.resets > 0,
         tuple((p.reason, tuple(p.steps), p.phase, order.get(p.buf or -1), tuple(order.get(b) for b in p.todo or ()),
                p.todo is None) for p in v.pending),
         tuple(order.get(b) for b in v.dmabufs), v.unbind_after_close)
        for v in sorted(V._st(s).devices.values(), key=lambda v: v.bdf)
    )
    bufs = tuple(
        (b.size, getattr(b.priv, "status", None), getattr(b.priv, "kref", None), b.released, len(b.attachments),
         len(b.resv.unsignaled()), b.resv.holder)
        for b in sorted(B.state(s).bufs.values(), key=lambda b: b.id)
    )
    bindings = tuple(sorted((k, b.driver, b.unbinding) for k, b in s.bindings.items()))
    dbg = s.dma_debug
    live_maps = len(dbg.live) if dbg is not None else 0
    return (
        bindings, tuple(sorted(s.p2pdma)), tuple(sorted(s.ext.get("released_bars", set()))),
        tuple(sorted(s.ext.get("unplugged", set()))), vdevs, bufs, tuple(per), c.exported is not None,
        c.exports_done, len(c.export_tickets),
        tuple(sorted(c.used.items())), tuple(sorted({v.kind for v in s.violations})),
        tuple(sorted({e[0] for e in s.ext.get("events", [])})), live_maps,
    )


def describe(spec: ModelSpec, s: System) -> dict[str, str]:
    """A human view of the state, compared step by step to show each step's changes."""
    c = cstate(s)
    out: dict[str, str] = {}
    v = V._st(s).devices.get(spec.owner)
    if v is not None:
        out["vfio device"] = ("open" if v.is_open else "closed") + (", memory decode on" if V.memory_enabled(v)
                                                                     else ", memory decode off")
        if v.power_d3hot:
            out["vfio device"] += ", D3hot"
        if v.pending:
            out["vfio device"] += "; blocked: " + "; ".join(blocked_ops(s))
    out["driver of owner"] = s.bindings[spec.owner].driver if spec.owner in s.bindings else "none (unbound)"
    for b in sorted(B.state(s).bufs.values(), key=lambda b: b.id):
        status = getattr(b.priv, "status", None)
        label = "dma-buf" if b.id == min(B.state(s).bufs) else f"dma-buf #{sorted(B.state(s).bufs).index(b.id) + 1}"
        out[label] = (f"{status.name if status is not None else '?'}, {len(b.attachments)} attachment(s), "
                      f"{len(b.resv.unsignaled())} unsignalled fence(s)")
    for i in range(len(spec.importers)):
        imp_id = c.imports[i]
        kind = spec.importers[i][0]
        if kind == "peer":
            out[f"peer {i}"] = "DMA in flight" if c.peer_inflight[i] else (
                "idle" if c.peer_addr[i] is None else "mapped, idle")
            continue
        if imp_id is None:
            out[f"importer {i}"] = "not attached"
            continue
        imp = I.state(s).imports.get(imp_id) if imp_id != -1 else None
        if imp is None:
            out[f"importer {i}"] = "detached"
            continue
        bits = ["mapped" if imp.mapped else "unmapped"]
        if imp.notified:
            bits.append("invalidation pending")
        elif imp.invalid:
            bits.append("invalidated")
        if imp.inflight:
            bits.append(f"{len(imp.inflight)} DMA in flight")
        out[f"importer {i}"] = ", ".join(bits)
    if s.ext.get("released_bars"):
        out["provider"] = "released"
    if c.failed:
        out["last refusal"] = c.failed[-1]
    if s.violations:
        out["violations"] = "; ".join(sorted({v.message for v in s.violations}))
    return out


def _diff(a: dict[str, str], b: dict[str, str]) -> list[str]:
    out = []
    for k in dict.fromkeys([*a, *b]):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}")
    return out


def check(
    spec: ModelSpec,
    *,
    max_states: int = 500_000,
    max_depth: int = 200,
    symmetry: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> Result:
    """Explore breadth-first until an invariant breaks or the state space is exhausted."""
    t0 = time.perf_counter()
    init = initial(spec)
    k0 = canonical(spec, init, symmetry)
    parent: dict[Any, tuple[Any, str] | None] = {k0: None}
    queue: deque[tuple[Any, System, int]] = deque([(k0, init, 0)])
    succ: dict[Any, list[Any]] = {}  # edges, for the liveness pass
    blocked: list[Any] = []  # states with a vfio operation that has not returned, in BFS order
    findings: dict[str, None] = {}
    transitions = 0
    depth_seen = 0
    bound: str | None = None
    last_report = t0
    broken = first_broken(spec, init)
    found: tuple[Any, Any, str] | None = (k0, broken[0], broken[1]) if broken else None
    if blocked_ops(init):
        blocked.append(k0)
    while queue and found is None:
        key, s, depth = queue.popleft()
        depth_seen = max(depth_seen, depth)
        if depth >= max_depth:
            bound = bound or f"depth {max_depth}"
            continue
        out = succ.setdefault(key, [])
        for label, fn in actions(spec, s):
            s2 = s.copy()
            try:
                fn(s2)
            except B.ResvWouldBlock:
                continue  # the step sleeps on a lock: nothing happens until the holder unlocks
            transitions += 1
            k2 = canonical(spec, s2, symmetry)
            out.append(k2)
            if k2 in parent:
                continue
            parent[k2] = (key, label)
            for f in s2.ext.get("findings", ()):
                findings.setdefault(f[0])
            br = first_broken(spec, s2)
            if br is not None:
                found = (k2, br[0], br[1])
                break
            if blocked_ops(s2):
                blocked.append(k2)
            if len(parent) >= max_states:
                bound = f"{max_states} states"
                break
            queue.append((k2, s2, depth + 1))
        if bound and bound.endswith("states"):
            break
        now = time.perf_counter()
        if progress is not None and now - last_report > 2.0:
            progress(len(parent), depth_seen, now - t0)
            last_report = now
    kind = "safety"
    live_checked = False
    if found is None and bound is None and blocked:
        live_checked = True
        stuck = _never_unblocked(succ, blocked, parent)
        if stuck is not None:
            inv = LIVENESS[0]
            found = (stuck, inv, "")
            kind = "liveness"
    elif found is None and bound is None:
        live_checked = True
    seconds = time.perf_counter() - t0
    if found is None:
        return Result(spec.name, "holds", None, None, len(parent), transitions, seconds, depth_seen,
                      complete=bound is None, bound=bound, reductions=symmetry, liveness_checked=live_checked,
                      findings=list(findings))
    key, inv, why = found
    labels: list[str] = []
    cur: Any = key
    while parent[cur] is not None:
        prev, label = parent[cur]  # type: ignore[misc]
        labels.append(label)
        cur = prev
    labels.reverse()
    trace = replay(spec, labels)
    if kind == "liveness":
        s_end = initial(spec)
        todo: dict[str, Callable[[System], Any]] = {}
        for label in labels:
            todo = dict(actions(spec, s_end))
            todo[label](s_end)
        why = inv.broken(spec, s_end) or "a vfio operation never completes"
    return Result(spec.name, "violated", inv.name, why, len(parent), transitions, seconds,
                  max(depth_seen, len(labels)), complete=True, bound=bound,
                  trace=trace, reductions=symmetry, kind=kind, liveness_checked=live_checked,
                  findings=list(findings))


def _never_unblocked(succ: dict[Any, list[Any]], blocked: list[Any], parent: dict[Any, Any]) -> Any | None:
    """The first state (in breadth-first order, so the shortest trace) with a blocked vfio
    operation from which no continuation reaches a state where nothing is blocked."""
    bset = set(blocked)
    pred: dict[Any, list[Any]] = {}
    for a, outs in succ.items():
        for b in outs:
            pred.setdefault(b, []).append(a)
    can = {k for k in parent if k not in bset}  # nothing blocked there
    todo = deque(can)
    while todo:
        k = todo.popleft()
        for p in pred.get(k, ()):
            if p not in can:
                can.add(p)
                todo.append(p)
    for k in blocked:
        if k not in can:
            return k
    return None


def replay(spec: ModelSpec, labels: list[str]) -> list[Step]:
    """Re-run a trace from the start, recording each step's visible changes."""
    s = initial(spec)
    steps = []
    before = describe(spec, s)
    for n, label in enumerate(labels, 1):
        todo = dict(actions(spec, s))
        if label not in todo:
            raise RuntimeError(f"trace step {n} ({label}) is not enabled on replay")
        todo[label](s)  # a step in a trace never slept on a lock (those are not transitions)
        after = describe(spec, s)
        steps.append(Step(n, label, _diff(before, after)))
        before = after
    return steps
