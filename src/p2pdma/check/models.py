"""Bounded models for the checker: a machine, an exporter, importers, and which operations may
happen in which order. Each operation is a real call into the run-time model (``p2pdma.model``).

Bundled models (``p2pdma check NAME``):

- ``dmabuf-revoke``: vfio exports a GPU BAR, dynamic (rdma) importers on a NIC map and DMA;
  decode-off, decode-on, reset, close and unbind may strike at any point. Holds.
- ``importer-ignores-invalidate``: the same with an importer that ignores invalidation and keeps
  using its mapping (the revoke waits for its unmap, its DMA after invalidation is caught). Violated.
- ``importer-never-unmaps``: an importer that ignores invalidation and never unmaps: the revoke
  never completes (a liveness failure, with the shortest trace to where it cannot). Violated.
- ``unrevoke-waits``: decode off and on again with DMA in flight: the un-revoke waits for the
  fences before the buffer is usable again (Linux 7.2). Holds.
- ``export-during-revoke``: a second export while a decode-off revoke waits: it sleeps on
  memory_lock and is born revoked. Holds.
- ``pinned-importer``: a static importer (no importer ops, so no peer2peer): vfio refuses it at
  attach (7.2: vfio has no .pin at all). Holds.
- ``provider-no-revoke``: the provider layer alone, a peer DMAs into the BAR, and the owning
  driver may unbind at any time: the objection's case. Violated.
- ``provider-with-revoke``: the same memory exported through vfio's dma-buf: unbind waits for the
  user's close (request notifier), which revokes and waits. Holds.
- ``revoke-no-wait``: ``dmabuf-revoke`` with a seeded exporter bug (the revoke waits for neither
  fences nor unmaps). Violated.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pdma.errors import InputError, KernelError, P2pdmaError
from p2pdma.model import dma as D
from p2pdma.model import dmabuf as B
from p2pdma.model import fabric as F
from p2pdma.model import importers as I
from p2pdma.model import provider as P
from p2pdma.model import vfio as V
from p2pdma.model.system import PAGE_SIZE, System, fast_copy

CLASSIC_TRIGGERS = ("decode-off", "decode-on", "reset", "close", "unbind", "unplug")
TRIGGERS = (*CLASSIC_TRIGGERS, "d3hot", "d0", "flr", "pm-entry", "pm-exit", "hot-reset")
MODES = ("vfio", "provider")
MAX_IMPORTERS = 4
DMA_LEN = 64


@dataclass(frozen=True)
class ModelSpec:
    """What the checker explores."""

    name: str
    machine: str = "gpu8-switches"
    owner: str = "0000:03:00.0"
    bar: int = 1
    importers: tuple[tuple[str, str], ...] = (("rdma", "0000:05:00.0"),) * 2
    mode: str = "vfio"  # vfio: dma-buf export; provider: the provider layer alone
    triggers: tuple[str, ...] = CLASSIC_TRIGGERS
    dma_per_importer: int = 1
    wait_for_fences: bool = True
    static: bool = False
    expect: str = "holds"
    description: str = ""
    exports: int = 1

    def with_importers(self, n: int) -> ModelSpec:
        """The same model with ``n`` importers like the first one."""
        if n < 1:
            raise InputError("--importers must be at least 1")
        if n > MAX_IMPORTERS:
            raise InputError(f"--importers {n}: at most {MAX_IMPORTERS} (the checker's bound: the state space "
                             "grows about sevenfold per importer)")
        from dataclasses import replace

        return replace(self, importers=(self.importers[0],) * n)


RDMA_NIC = ("rdma", "0000:05:00.0")
BUNDLED: dict[str, ModelSpec] = {
    "dmabuf-revoke": ModelSpec(
        "dmabuf-revoke", description="vfio dma-buf export with dynamic importers under every revoke trigger"),
    "importer-ignores-invalidate": ModelSpec(
        "importer-ignores-invalidate", importers=(("ignores-invalidate", "0000:05:00.0"),),
        triggers=("decode-off", "reset", "close"), expect="violated",
        description="an importer that ignores invalidation keeps using a revoked buffer"),
    "importer-never-unmaps": ModelSpec(
        "importer-never-unmaps", importers=(("never-unmaps", "0000:05:00.0"),),
        triggers=("decode-off", "reset", "close"), dma_per_importer=0, expect="violated",
        description="an importer that never unmaps: the revoke never completes (liveness)"),
    "unrevoke-waits": ModelSpec(
        "unrevoke-waits", importers=(RDMA_NIC,), triggers=("decode-off", "decode-on", "d3hot", "d0"),
        dma_per_importer=2, description="decode and power off and on with DMA in flight: un-revoke waits for fences"),
    "export-during-revoke": ModelSpec(
        "export-during-revoke", importers=(RDMA_NIC,), triggers=("decode-off", "decode-on", "flr"), exports=2,
        description="an export while a revoke waits sleeps on memory_lock and is born revoked"),
    "pinned-importer": ModelSpec(
        "pinned-importer", importers=(RDMA_NIC,), static=True, triggers=("decode-off", "close"),
        description="a static importer (no importer ops, so no peer2peer) is refused at attach"),
    "provider-no-revoke": ModelSpec(
        "provider-no-revoke", importers=(("peer", "0000:05:00.0"),), mode="provider",
        triggers=("unbind",), expect="violated",
        description="the provider layer alone: the owner unbinds while a peer DMAs"),
    "provider-with-revoke": ModelSpec(
        "provider-with-revoke", importers=(RDMA_NIC,), triggers=("unbind", "close"),
        description="the same memory behind vfio's dma-buf: unbind waits for close, which revokes and waits"),
    "revoke-no-wait": ModelSpec(
        "revoke-no-wait", importers=(RDMA_NIC,), triggers=("decode-off", "reset", "close"),
        wait_for_fences=False, expect="violated",
        description="seeded exporter bug: revoke waits for neither fences nor unmaps"),
}


_FIELD_TYPES: dict[str, type] = {"name": str, "machine": str, "owner": str, "bar": int, "mode": str,
                                 "dma_per_importer": int, "wait_for_fences": bool, "static": bool, "expect": str,
                                 "description": str, "exports": int}
EXPECTS = ("holds", "violated")


def _bad(where: str, path: str, msg: str) -> InputError:
    return InputError(f"{where}: {path}: {msg}")


def model_from_data(data: Any, where: str, default_name: str) -> ModelSpec:
    """Validate a model document by type and range, each error naming the field's path."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: top level must be a mapping")
    known = set(ModelSpec.__dataclass_fields__)
    bad = {str(k) for k in data} - known
    if bad:
        raise InputError(f"{where}: unknown keys {sorted(bad)} (known: {sorted(known)})")
    out: dict[str, Any] = {}
    for key, want in _FIELD_TYPES.items():
        if key not in data:
            continue
        v = data[key]
        if want is int and (type(v) is not int):
            raise _bad(where, key, f"must be an integer, not {type(v).__name__} {v!r}")
        if want is bool and type(v) is not bool:
            raise _bad(where, key, f"must be true or false, not {type(v).__name__} {v!r}")
        if want is str and not isinstance(v, str):
            raise _bad(where, key, f"must be text, not {type(v).__name__} {v!r}")
        out[key] = v
    if "bar" in out and not 0 <= out["bar"] < 6:
        raise _bad(where, "bar", f"must be a BAR number 0-5, not {out['bar']}")
    for key, hi in (("dma_per_importer", 4), ("exports", 4)):
        if key in out and not (0 if key == "dma_per_importer" else 1) <= out[key] <= hi:
            raise _bad(where, key, f"must be within {0 if key == 'dma_per_importer' else 1}-{hi} (the checker's "
                                   f"bound), not {out[key]}")
    if "mode" in out and out["mode"] not in MODES:
        raise _bad(where, "mode", f"must be one of {', '.join(MODES)}, not {out['mode']!r}")
    if "expect" in out and out["expect"] not in EXPECTS:
        raise _bad(where, "expect", f"must be one of {', '.join(EXPECTS)}, not {out['expect']!r}")
    if "importers" in data:
        imps = data["importers"]
        if not isinstance(imps, list) or not 1 <= len(imps) <= MAX_IMPORTERS:
            raise _bad(where, "importers", "must be a list of 1-4 {kind, dev} (the checker's bound)")
        parsed = []
        for k, x in enumerate(imps):
            if not isinstance(x, dict) or set(x) != {"kind", "dev"}:
                raise _bad(where, f"importers[{k}]", "must be a mapping with exactly kind and dev")
            for f in ("kind", "dev"):
                if not isinstance(x[f], str):
                    raise _bad(where, f"importers[{k}].{f}", f"must be text, not {type(x[f]).__name__}")
            kind = I.ALIASES.get(x["kind"], x["kind"])
            if kind not in I.KINDS and kind != "peer":
                raise _bad(where, f"importers[{k}].kind", f"unknown importer kind {x['kind']!r}")
            parsed.append((kind, x["dev"]))
        out["importers"] = tuple(parsed)
    if "triggers" in data:
        trig = data["triggers"]
        if not isinstance(trig, list):
            raise _bad(where, "triggers", f"must be a list of trigger names, not {type(trig).__name__}")
        for k, t in enumerate(trig):
            if not isinstance(t, str):
                raise _bad(where, f"triggers[{k}]", f"must be text, not {type(t).__name__} {t!r}")
        unknown = [t for t in trig if t not in TRIGGERS]
        if unknown:
            raise InputError(f"{where}: unknown triggers {unknown} (known: {', '.join(TRIGGERS)})")
        out["triggers"] = tuple(trig)
    out.setdefault("name", default_name)
    return ModelSpec(**out)


def _load_yaml(p: Path) -> Any:
    """A model file through the project's bounded YAML loader (sources.safeload: regular files only,
    size cap, depth and alias budget, plain tags)."""
    from p2pdma.sources import safeload

    return safeload.load_path(p, kind="model")


def load_model(name_or_file: str) -> ModelSpec:
    """A bundled model by name, or one described in a YAML file (keys as ModelSpec's fields)."""
    if name_or_file in BUNDLED:
        return BUNDLED[name_or_file]
    p = Path(name_or_file)
    if p.suffix not in (".yaml", ".yml", ".json"):
        raise InputError(f"unknown model {name_or_file!r} (bundled: {', '.join(BUNDLED)}; or a .yaml file)")
    return model_from_data(_load_yaml(p), str(p), p.stem)


@dataclass
class CheckState:
    """The checker's own bookkeeping inside the System (so it is copied with it)."""

    exported: int | None = None
    exports_done: int = 0  # export ioctls issued
    export_tickets: list[int] = field(default_factory=list)  # exports sleeping on memory_lock
    imports: list[int | None] = field(default_factory=list)
    dma_started: list[int] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    peer_addr: list[int | None] = field(default_factory=list)
    peer_inflight: list[bool] = field(default_factory=list)


fast_copy(CheckState)


def cstate(system: System) -> CheckState:
    c = system.ext["check"]
    assert isinstance(c, CheckState)
    return c


def initial(spec: ModelSpec) -> System:
    """The starting System: owner opened through vfio (or bound to its own driver), importers'
    devices bound, DMA masks set; deferred invalidation so each reaction is its own step."""
    from p2pdma.examples import load

    topo = load(spec.machine)
    for bdf in (spec.owner, *(d for _, d in spec.importers)):
        if bdf not in topo:
            raise InputError(f"model {spec.name}: no device {bdf} in machine {spec.machine}")
    s = System(topo, history_limit=4)
    s.ext["deferred_invalidate"] = True
    for _, dev in spec.importers:
        if s.driver(dev) is None:
            s.bind(dev, "importer")
        s.set_dma_mask(dev, 64)
    if spec.mode == "vfio":
        V.vfio_open(s, spec.owner, wait_for_fences=spec.wait_for_fences)
    else:
        s.bind(spec.owner, "gpu-driver")
        P.pcim_p2pdma_init(s, spec.owner)
    n = len(spec.importers)
    s.ext["check"] = CheckState(imports=[None] * n, dma_started=[0] * n, peer_addr=[None] * n,
                                peer_inflight=[False] * n)
    return s


Action = tuple[str, Callable[[System], Any]]


def _try(label: str, fn: Callable[[System], Any]) -> Action:
    """An action whose kernel error is part of the behaviour (recorded, not raised). A call that
    sleeps on a reservation lock (ResvWouldBlock) did nothing: the explorer drops that step. An
    ioctl that sleeps inside the kernel (IoctlBlocked) is state, not an error."""

    def run(s: System) -> None:
        try:
            fn(s)
        except B.ResvWouldBlock:
            raise
        except V.IoctlBlocked:
            pass
        except P2pdmaError as exc:  # a kernel refusal, or a violation the System recorded
            cstate(s).failed.append(f"{label}: {errno.errorcode.get(exc.errno, exc.errno)}")
        _collect_exports(s)

    return label, run


def _collect_exports(s: System) -> None:
    """An export that slept returns once its memory_lock turn came: userspace now has the fd."""
    c = cstate(s)
    if not c.export_tickets:
        return
    for v in V._st(s).devices.values():
        for t in list(c.export_tickets):
            if t in v.done:
                c.export_tickets.remove(t)
                ret = v.done.pop(t)
                if ret > 0 and c.exported is None:
                    c.exported = ret


def actions(spec: ModelSpec, s: System) -> list[Action]:
    """Every operation enabled in this state, in a fixed order."""
    c = cstate(s)
    out: list[Action] = []
    owner = spec.owner
    vdev = V._st(s).devices.get(owner)
    is_open = vdev is not None and vdev.is_open
    if spec.mode == "vfio" and c.exports_done < spec.exports and is_open and not c.export_tickets:
        def export(s: System) -> None:
            cs = cstate(s)
            cs.exports_done += 1
            try:
                buf = V.vfio_device_feature(s, owner, V.dma_buf_request(spec.bar, [(0, 2 * PAGE_SIZE)]))
            except V.IoctlBlocked as blk:
                cs.export_tickets.append(blk.ticket)
                raise
            if cs.exported is None:
                cs.exported = buf
        out.append(_try("export" if c.exports_done == 0 else f"export #{c.exports_done + 1}", export))
    ist = I.state(s)
    for i, (kind, dev) in enumerate(spec.importers):
        if kind == "peer":
            out.extend(_peer_actions(spec, s, i, dev))
            continue
        imp_id = c.imports[i]
        if imp_id is None:
            if c.exported is not None:
                def do_import(s: System, i: int = i, kind: str = kind, dev: str = dev) -> None:
                    cs = cstate(s)
                    assert cs.exported is not None
                    cs.imports[i] = -1  # attempted once; a refusal stays a refusal
                    cs.imports[i] = I.import_buffer(s, kind, dev, cs.exported, static=spec.static)
                out.append(_try(f"importer {i} attaches and maps", do_import))
            continue
        if imp_id == -1:
            continue
        imp = ist.imports.get(imp_id)
        if imp is None:
            continue
        if imp.notified:
            def handle(s: System, x: int = imp_id) -> None:
                I.handle_invalidate(s, x)
            out.append(_try(f"importer {i} handles the invalidation", handle))
        if c.dma_started[i] < spec.dma_per_importer:
            def start(s: System, i: int = i, x: int = imp_id) -> None:
                cstate(s).dma_started[i] += 1
                I.start_dma(s, x, 0, DMA_LEN, write=False)
            out.append(_try(f"importer {i} starts a DMA", start))
        for n, op in enumerate(sorted(imp.inflight)):
            def finish(s: System, o: int = op) -> None:
                I.finish_dma(s, o)
            out.append(_try(f"importer {i} finishes its DMA" + (f" #{n + 1}" if n else ""), finish))
        if not imp.inflight and kind != "never-unmaps":
            def rel(s: System, i: int = i, x: int = imp_id) -> None:
                cstate(s).imports[i] = -1
                I.release(s, x)
            out.append(_try(f"importer {i} releases the buffer", rel))
    for t in spec.triggers:
        if c.used.get(t, 0) >= 1:
            continue
        fn = _trigger(spec, s, t)
        if fn is not None:
            def trig(s: System, t: str = t, fn: Callable[[System], Any] = fn) -> None:
                cstate(s).used[t] = cstate(s).used.get(t, 0) + 1
                fn(s)
            out.append(_try(t, trig))
    return out


def _trigger(spec: ModelSpec, s: System, t: str) -> Callable[[System], Any] | None:
    owner = spec.owner
    if not s.present(owner):
        return None
    if spec.mode == "provider":
        if t == "unbind" and owner in s.bindings:
            return lambda s: s.unbind(owner)
        if t == "unplug":
            return lambda s: s.unplug(owner)
        return None
    v = V._st(s).devices.get(owner)
    open_ = v is not None and v.is_open
    if t == "decode-off" and open_:
        return lambda s: V.vfio_set_memory(s, owner, False)
    if t == "decode-on" and open_:
        return lambda s: V.vfio_set_memory(s, owner, True)
    if t == "reset" and open_:
        return lambda s: V.vfio_reset(s, owner)
    if t == "close" and open_:
        return lambda s: V.vfio_close(s, owner)
    if t == "unbind" and owner in s.bindings:
        return lambda s: V.vfio_unbind(s, owner)
    if t == "unplug":
        return lambda s: V.vfio_unplug(s, owner)
    if not open_:
        return None
    if t in ("d3hot", "d0"):
        return lambda s: V.vfio_set_power(s, owner, "D3hot" if t == "d3hot" else "D0")
    if t == "flr":
        return lambda s: V.vfio_flr(s, owner)
    if t == "hot-reset":
        return lambda s: V.vfio_hot_reset(s, owner)
    if t in ("pm-entry", "pm-exit"):
        feat = V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY if t == "pm-entry" else V.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
        return lambda s: V.vfio_device_feature(s, owner, V.feature_request(feat, V.VFIO_DEVICE_FEATURE_SET))
    return None


def _peer_actions(spec: ModelSpec, s: System, i: int, dev: str) -> list[Action]:
    """A peer that uses the provider layer directly: map the BAR with dma_map_p2p(), DMA."""
    c = cstate(s)
    out: list[Action] = []
    bar = next(b for b in s.topo[spec.owner].bars if b.index == spec.bar)
    if c.peer_addr[i] is None and c.dma_started[i] < spec.dma_per_importer:
        def pmap(s: System) -> None:
            prov = P.pcim_p2pdma_provider(s, spec.owner, spec.bar)
            cs = cstate(s)
            cs.dma_started[i] += 1
            if prov is None:
                raise KernelError("no provider", errno.ENODEV)
            cs.peer_addr[i], _ = D.dma_map_p2p(s, dev, prov, bar.start, DMA_LEN)
            cs.peer_inflight[i] = True
        out.append(_try(f"peer {i} maps the BAR and starts a DMA", pmap))
    if c.peer_inflight[i]:
        def pfin(s: System) -> None:
            cs = cstate(s)
            addr = cs.peer_addr[i]
            assert addr is not None
            cs.peer_inflight[i] = False
            F.dma(s, dev, addr, DMA_LEN, write=False, context=f"peer {i} DMA")
        out.append(_try(f"peer {i} finishes its DMA", pfin))
    return out
