"""Running scenarios on the run-time model: each step, its timeline entry, violations and bytes
moved, and the verdict (data intact, nothing left in flight). The format (parse, validate) is in
scenario_format.py; its public names are importable from here too.
"""

from __future__ import annotations

import errno as E
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pdma.errors import InputError, IommuFault, P2pdmaError
from p2pdma.model import dmabuf as B
from p2pdma.model import fabric as F
from p2pdma.model import importers as I
from p2pdma.model import vfio as V
from p2pdma.model.scenario_format import (
    DEFAULT_MACHINE,
    DEFAULT_SCENARIO,
    MAX_BYTES,
    NAME_RE,
    OPS,
    PATHS,
    SCHEMA,
    TRIGGERS,
    DeviceDecl,
    Scenario,
    Step,
    bundled_names,
    load_bundled,
    load_scenario,
    parse_scenario,
    ref_value,
    size_value,
)
from p2pdma.model.system import System
from p2pdma.pci.topology import Topology

_REEXPORTED = (DEFAULT_MACHINE, DEFAULT_SCENARIO, MAX_BYTES, NAME_RE, OPS, TRIGGERS, ref_value)

# -- running -------------------------------------------------------------------------------------
@dataclass(slots=True)
class StepResult:
    """What one step did: outcome, a one-line summary, kernel events, violations, bytes moved."""

    step: Step
    status: str  # ok | error | waits
    summary: str
    result: Any = None
    errno: str | None = None
    error: str | None = None
    events: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class RunResult:
    """A whole run: every step, bytes per path, every violation, and whether the data is intact."""

    scenario: Scenario
    machine: str
    profile: str
    steps: list[StepResult]
    bytes_by_path: dict[str, int]
    violations: list[dict[str, Any]]
    data_intact: bool
    mismatches: list[str]
    left: list[str]
    findings: list[dict[str, Any]] = field(default_factory=list)  # the kernel's own defects met on the way

    def to_json(self) -> dict[str, Any]:
        """The ``p2pdma.simulate/1`` document."""
        return {
            "schema": SCHEMA,
            "scenario": self.scenario.name,
            "machine": self.machine,
            "kernel": self.profile,
            "iommu": self.scenario.iommu,
            "steps": [
                {"step": r.step.index, "op": r.step.op, "args": _json_args(r.step.args), "expect": r.step.expect,
                 "status": r.status, "summary": r.summary, "result": r.result, "errno": r.errno,
                 "error": r.error, "events": r.events, "violations": r.violations, "bytes": r.bytes}
                for r in self.steps
            ],
            "bytes_by_path": {p: self.bytes_by_path.get(p, 0) for p in PATHS},
            "violations": self.violations,
            "data_intact": self.data_intact,
            "mismatches": self.mismatches,
            "left_in_flight": self.left,
            "findings": self.findings,
        }


def _json_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: ([list(r) for r in v] if k == "ranges" else v) for k, v in args.items() if v is not None}


def pattern_bytes(seed: int, size: int) -> bytes:
    """Deterministic test data: the first ``size`` bytes of pattern stream ``seed`` (fabric.pattern_slice),
    which fills and DMAs keep as tokens instead of bytes."""
    return F.pattern_slice(seed, 0, size).tobytes()


def _pattern(seed: int, size: int) -> F.Memory:
    """``size`` bytes of pattern stream ``seed`` as a sparse Memory (whole chunks cost nothing)."""
    mem = F.Memory()
    mem.fill_pattern(0, size, seed)
    return mem


def human(n: int) -> str:
    """A byte count the way a person reads it: 4 MiB, 64 KiB, 3.5 GiB, 100 B."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


SHOWN_EVENTS = ("vfio revoke", "move_notify", "importer ", "iommu fault", "unplug", "unbind", "unbound",
                "pci_p2pdma_release", "dma_buf_release")


def _shown(line: str) -> bool:
    if line.startswith("vfio ") and not line.startswith(("vfio DMA_BUF", "vfio open")):
        return True
    return line.startswith(SHOWN_EVENTS)


class _Run:
    """The state of one run: the System plus the names the scenario gave to what it created."""

    def __init__(self, sc: Scenario, topo: Topology, profile: str) -> None:
        self.sc = sc
        self.s = System(topo, profile=profile, seed=sc.seed, iommu=sc.iommu, history_limit=1 << 30)
        self.bufs: dict[str, int] = {}
        self.imports: dict[str, int] = {}
        self.ops: dict[str, tuple[int, str, bool, int, int, F.Memory | None]] = {}
        self.shadow: dict[tuple[str, int], F.Memory] = {}
        self.touched: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.mismatches: list[str] = []

    # the reference copy of what should be in each BAR --------------------------------------------
    def _remember(self, bdf: str, bar: int, off: int, data: F.Memory, data_off: int, n: int) -> None:
        """Record that ``n`` bytes of ``data`` at ``data_off`` were written at ``off`` of a BAR (shared, not copied)."""
        self.shadow.setdefault((bdf, bar), F.Memory()).copy_from(data, data_off, off, n)
        self.touched.setdefault((bdf, bar), []).append((off, n))

    def _shadow(self, bdf: str, bar: int) -> F.Memory:
        return self.shadow.setdefault((bdf, bar), F.Memory())

    def _segments(self, buf_name: str, offset: int, length: int) -> list[tuple[str, int, int, int, int]]:
        """(owner, bar, bar offset, buffer offset, length) pieces of a buffer range."""
        priv = B.state(self.s).bufs[self.bufs[buf_name]].priv
        assert isinstance(priv, V.VfioPciDmaBuf)
        bar = next(b for b in self.s.topo[priv.provider.owner].bars if b.index == priv.region_index)
        out, pos = [], 0
        for paddr, n in priv.phys_vec:
            lo, hi = max(offset, pos), min(offset + length, pos + n)
            if lo < hi:
                out.append((priv.provider.owner, bar.index, paddr - bar.start + lo - pos, lo - offset, hi - lo))
            pos += n
        return out

    def buffer_of(self, imp_name: str) -> str:
        imp = I.state(self.s).imports[self.imports[imp_name]]
        return next(k for k, v in self.bufs.items() if v == imp.buf)

    def check_read(self, label: str, buf_name: str, offset: int, got: F.Memory, moved: int, length: int) -> bool:
        """Whether a read returned what was last written there, compared chunk by chunk."""
        ok = moved == length and all(
            got.same(po, self._shadow(o, b), bo, n) for o, b, bo, po, n in self._segments(buf_name, offset, length))
        if not ok:
            self.mismatches.append(f"{label}: read {human(length)} at {offset:#x} of {buf_name} returned "
                                   f"{'no data' if not moved else 'other data'} than was last written there")
        return ok

    def verify(self, which: str) -> list[str]:
        bad = []
        keys = sorted(self.touched)
        if which != "all":
            priv = B.state(self.s).bufs[self.bufs[which]].priv
            keys = [k for k in keys if k == (priv.provider.owner, priv.region_index)]
        for owner, bar in keys:
            for off, n in _merge(self.touched[(owner, bar)]):
                if not F.bar_memory(self.s, owner, bar).same(off, self._shadow(owner, bar), off, n):
                    bad.append(f"{owner} BAR{bar} {off:#x}+{human(n)} does not hold what was last written")
        return bad


def _merge(iv: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for off, n in sorted(iv):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return [(a, b) for a, b in out]


def _done(ok: bool) -> str:
    return "ok" if ok else "waits"


def _exec(r: _Run, step: Step) -> tuple[str, str, Any]:
    """Run one step: (status ok|waits, summary, result). Kernel refusals raise P2pdmaError."""
    s, a, op = r.s, step.args, step.op
    name_of = {d.bdf: d.name for d in r.sc.devices.values()}

    def dn(bdf: str) -> str:
        return f"{name_of[bdf]} ({bdf})" if bdf in name_of else bdf

    if op == "note":
        return "ok", a["text"], None
    if op == "fill":
        data = _pattern(a["pattern"], a["size"])
        bar = next((b for b in s.topo[a["device"]].bars if b.index == a["bar"] and b.is_mem), None)
        if bar is None or a["offset"] + a["size"] > bar.size:
            raise InputError(f"step {step.index}: {a['device']} has no memory BAR{a['bar']} holding "
                             f"{a['offset']:#x}+{a['size']:#x}")
        F.cpu_fill_pattern(s, a["device"], a["bar"], a["offset"], a["size"], a["pattern"])
        r._remember(a["device"], a["bar"], a["offset"], data, 0, a["size"])
        return "ok", f"CPU writes {human(a['size'])} (pattern {a['pattern']}) at {a['offset']:#x} of " \
                     f"{dn(a['device'])} BAR{a['bar']}", None
    if op == "export":
        arg = V.dma_buf_request(a["bar"], a["ranges"])
        waits = False
        try:
            buf_id = V.vfio_device_feature(s, a["device"], arg)
        except V.IoctlBlocked as blk:  # behind a revoke holding memory_lock: the buffer exists already
            waits = True
            buf_id = next(op.arg for op in V._st(s).devices[a["device"]].pending if op.ticket == blk.ticket)
        r.bufs[a["name"]] = buf_id
        size = B.state(s).bufs[buf_id].size
        rng = ", ".join(f"{o:#x}+{human(n)}" for o, n in a["ranges"])
        status = "waits for memory_lock" if waits else V.buffer_status(s, buf_id).name
        return _done(not waits), f"{a['name']} = dma-buf {buf_id} of {human(size)}: {dn(a['device'])} " \
                                 f"BAR{a['bar']} [{rng}], {status}", buf_id
    if op == "import":
        buf_id = _buf(r, a["buffer"])
        imp_id = I.import_buffer(s, a["kind"], a["device"], buf_id, static=a["static"])
        r.imports[a["name"]] = imp_id
        via = I.mapped_via(s, imp_id)
        return "ok", f"{a['name']}: {a['kind']} importer on {dn(a['device'])} maps {a['buffer']} ({via})", imp_id
    if op in ("dma", "start"):
        imp_id = r.imports[a["importer"]]
        payload = _pattern(a["pattern"], a["size"]) if a["write"] else None
        faults0 = len(F.state(s).faults)
        op_id = I.start_dma(s, imp_id, a["offset"], a["size"], write=a["write"], data=payload)
        verb = "writes" if a["write"] else "reads"
        what = f"{a['importer']} {verb} {human(a['size'])} at {a['offset']:#x}"
        if op == "start":
            r.ops[a["name"]] = (op_id, a["importer"], a["write"], a["offset"], a["size"], payload)
            return "ok", f"{a['name']}: {what} (in flight, DMA {op_id})", op_id
        return "ok", what + _finish(r, op_id, a["importer"], a["write"], a["offset"], a["size"], payload,
                                    faults0), op_id
    if op == "finish":
        op_id, imp_name, write, offset, size, sent = r.ops[a["name"]]
        faults0 = len(F.state(s).faults)
        verb = "write" if write else "read"
        return "ok", f"{a['name']}: {imp_name}'s {verb} of {human(size)} at {offset:#x} completes" + \
            _finish(r, op_id, imp_name, write, offset, size, sent, faults0), op_id
    if op == "remap":
        I.remap(s, r.imports[a["importer"]])
        return "ok", f"{a['importer']} maps its buffer again", None
    if op == "release":
        I.release(s, r.imports[a["importer"]])
        return "ok", f"{a['importer']} unmaps and detaches", None
    if op == "put":
        B.dma_buf_put(s, _buf(r, a["buffer"]))
        return "ok", f"the fd of {a['buffer']} is closed", None
    if op == "verify":
        bad = r.verify(a["buffer"])
        r.mismatches.extend(bad)
        what = "every exported BAR" if a["buffer"] == "all" else f"the BAR behind {a['buffer']}"
        if bad:
            return "ok", f"{what}: DATA LOST: " + "; ".join(bad), False
        return "ok", f"{what} holds what was last written", True
    return _trigger(r, op, a["device"], dn)


def _buf(r: _Run, name: str) -> int:
    if name not in r.bufs:
        raise P2pdmaError(f"{name} was not created (its export failed)", E.EBADF)
    return r.bufs[name]


def _finish(r: _Run, op_id: int, imp_name: str, write: bool, offset: int, size: int, data: F.Memory | None,
            faults0: int) -> str:
    s = r.s
    before = dict(F.state(s).bytes_by_path)
    got, moved = I.finish_dma_sparse(s, op_id)
    faulted = len(F.state(s).faults) > faults0
    by_path = {p: F.state(s).bytes_by_path[p] - before.get(p, 0) for p in F.state(s).bytes_by_path}
    via = ", ".join(f"{p} {human(n)}" for p, n in by_path.items() if n) or "nothing moved"
    buf_name = r.buffer_of(imp_name)
    if faulted:
        return f": IOMMU fault, {via}"
    if write:
        assert data is not None
        for owner, bar, bo, po, n in r._segments(buf_name, offset, size):
            r._remember(owner, bar, bo, data, po, n)
        return f": {via}"
    ok = r.check_read(f"{imp_name} DMA {op_id}", buf_name, offset, got, moved, size)
    return f": {via}, " + ("data as last written" if ok else "DATA DIFFERS from what was last written")


def _trigger(r: _Run, op: str, bdf: str, dn: Callable[[str], str]) -> tuple[str, str, Any]:
    s = r.s
    decl = next((d for d in r.sc.devices.values() if d.bdf == bdf), None)
    is_vfio = V._st(s).devices.get(bdf) is not None
    if op == "open":
        V.vfio_open(s, bdf, wait_for_fences=decl.wait_for_fences if decl else True)
        s.set_dma_mask(bdf, decl.dma_bits if decl else 64)
        return "ok", f"{dn(bdf)} opened through vfio-pci", None
    if op == "reset":
        ok = V.vfio_reset(s, bdf)
        return _done(ok), f"VFIO_DEVICE_RESET of {dn(bdf)}" + ("" if ok else ": waits"), ok
    if op in ("decode-off", "decode-on"):
        ok = V.vfio_set_memory(s, bdf, op == "decode-on")
        word = "on" if op == "decode-on" else "off"
        return _done(ok), f"memory decode of {dn(bdf)} turned {word}" + ("" if ok else ": waits"), ok
    if op in ("d3hot", "d0"):
        ok = V.vfio_set_power(s, bdf, "D3hot" if op == "d3hot" else "D0")
        return _done(ok), f"{dn(bdf)} to {'D3hot' if op == 'd3hot' else 'D0'}" + ("" if ok else ": waits"), ok
    if op == "flr":
        ok = V.vfio_flr(s, bdf)
        return _done(ok), f"function-level reset of {dn(bdf)} by a config write" + ("" if ok else ": waits"), ok
    if op == "hot-reset":
        ok = V.vfio_hot_reset(s, bdf)
        return _done(ok), f"hot reset of the dev_set of {dn(bdf)}" + ("" if ok else ": waits"), ok
    if op == "close":
        ok = V.vfio_close(s, bdf)
        return _done(ok), f"{dn(bdf)} closed" + ("" if ok else ": waits"), ok
    if op == "unbind":
        ok = V.vfio_unbind(s, bdf) if is_vfio else s.unbind(bdf)
        return _done(ok), f"the driver of {dn(bdf)} unbinds" + ("" if ok else ": waits"), ok
    # unplug: vfio's remove closes and waits first; any other driver is torn off at once
    if is_vfio:
        ok = V.vfio_unplug(s, bdf)
    else:
        s.unplug(bdf)
        ok = True
    return _done(ok), f"{dn(bdf)} is unplugged" + ("" if ok else ": waits for its users"), ok


def run_scenario(sc: Scenario, topo: Topology, profile: str) -> RunResult:
    """Run every step on a fresh System for ``topo``; deterministic for a given scenario and machine.
    InputError when the scenario names devices the machine lacks."""
    for d in sc.devices.values():
        if d.bdf not in topo:
            raise InputError(f"{sc.source}: device {d.name} ({d.bdf}) is not in machine {topo.name}")
    for st in sc.steps:
        for key in ("device",):
            bdf = st.args.get(key)
            if isinstance(bdf, str) and bdf not in topo:
                raise InputError(f"{sc.source}: step {st.index}: {bdf} is not in machine {topo.name}")
    r = _Run(sc, topo, profile)
    s = r.s
    for d in sc.devices.values():
        if d.bind == "vfio":
            V.vfio_open(s, d.bdf, wait_for_fences=d.wait_for_fences)
        elif d.bind is not None:
            s.bind(d.bdf, d.bind)
        s.set_dma_mask(d.bdf, d.dma_bits)
    steps: list[StepResult] = []
    all_violations: list[dict[str, Any]] = []
    for step in sc.steps:
        h0, v0 = len(s.history), len(s.violations)
        ev0 = len(s.ext.get("events", []))
        b0 = dict(F.state(s).bytes_by_path)
        res = StepResult(step, "ok", "")
        try:
            res.status, res.summary, res.result = _exec(r, step)
        except InputError:
            raise
        except IommuFault as exc:
            res.status, res.errno, res.error = "error", "EFAULT", str(exc)
            res.summary = f"refused: EFAULT ({exc})"
        except P2pdmaError as exc:
            res.status, res.errno, res.error = "error", E.errorcode.get(exc.errno, str(exc.errno)), str(exc)
            res.summary = f"refused: {res.errno} ({exc})"
        except Exception as exc:  # a bug in the model: say so, in the run's own terms
            res.status, res.errno, res.error = "error", None, f"internal error: {type(exc).__name__}: {exc}"
            res.summary = res.error
            res.violations.append({"kind": "internal-error", "message": res.error, "step": step.index})
        res.events = [h for h in s.history[h0:] if _shown(h)]
        for v in s.violations[v0:]:
            res.violations.append({"kind": v.kind, "message": v.message, "step": step.index})
        for ev in s.ext.get("events", [])[ev0:]:
            if ev and ev[0] == "revoke-early":
                res.violations.append({"kind": "revoke-early", "step": step.index,
                                       "message": f"{ev[2]} of {ev[1]} completed while dma-buf(s) "
                                                  f"{list(ev[3])} had unsignalled fences"})
        if step.expect is not None:
            got = res.errno if res.status == "error" else res.status
            if got != step.expect:
                res.violations.append({"kind": "expectation", "step": step.index,
                                       "message": f"step {step.index} ({step.op}): expected {step.expect}, "
                                                  f"got {got or 'an internal error'}"})
        res.bytes = {p: F.state(s).bytes_by_path[p] - b0.get(p, 0) for p in PATHS}
        all_violations.extend(res.violations)
        steps.append(res)
    final = r.verify("all")
    mismatches = r.mismatches + [m for m in final if m not in r.mismatches]
    left = [f"DMA {name} ({op[1]}) is still in flight" for name, op in r.ops.items()
            if op[0] in I.state(s).inflight]
    left += [f"{v.bdf}: {p.reason} still waits for {p.waiting}" for v in V._st(s).devices.values()
             for p in v.pending]
    left += [f"{bdf}: unbind still waits for the user to close the device" for bdf in V._st(s).devices
             if V.unbind_waits(s, bdf)]
    findings = [{"kind": f[0], "buffer": f[1], "message": f[2]} for f in s.ext.get("findings", [])]
    return RunResult(sc, topo.name, profile, steps, {p: F.state(s).bytes_by_path[p] for p in PATHS},
                     all_violations, not mismatches, mismatches, left, findings)


__all__ = ["SCHEMA", "Scenario", "Step", "DeviceDecl", "RunResult", "StepResult", "parse_scenario",
           "load_scenario", "load_bundled", "bundled_names", "run_scenario", "pattern_bytes", "human",
           "size_value", "DEFAULT_SCENARIO", "DEFAULT_MACHINE", "PATHS"]
