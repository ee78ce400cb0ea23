"""Bounded models for the checker: a machine, an exporter, importers, and which operations may
happen in which order. Each operation is a real call into the run-time model (``p2pdma.model``).

Bundled models (``p2pdma check NAME``):

- ``dmabuf-revoke``: vfio exports a GPU BAR, dynamic (rdma) importers on a NIC map and DMA;
  decode-off, decode-on, reset, close and unbind may strike at any point. Holds.
- ``importer-ignores-invalidate``: the same with an importer that ignores move_notify. Violated.
- ``pinned-importer``: a static importer that wants pinning: vfio refuses it at attach. Holds.
- ``provider-no-revoke``: the provider layer alone, a peer DMAs into the BAR, and the owning
  driver may unbind at any time: the objection's case. Violated.
- ``provider-with-revoke``: the same memory exported through vfio's dma-buf: unbind closes the
  device, which revokes and waits. Holds.
- ``revoke-no-wait``: ``dmabuf-revoke`` with a seeded exporter bug (revoke does not wait for
  fences). Violated.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2pdma.errors import InputError, KernelError, P2pdmaError
from p2pdma.model import dma as D
from p2pdma.model import fabric as F
from p2pdma.model import importers as I
from p2pdma.model import provider as P
from p2pdma.model import vfio as V
from p2pdma.model.system import PAGE_SIZE, System

TRIGGERS = ("decode-off", "decode-on", "reset", "close", "unbind", "unplug")
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
    triggers: tuple[str, ...] = TRIGGERS
    dma_per_importer: int = 1
    wait_for_fences: bool = True
    static: bool = False
    expect: str = "holds"
    description: str = ""

    def with_importers(self, n: int) -> ModelSpec:
        """The same model with ``n`` importers like the first one."""
        if n < 1:
            raise InputError("--importers must be at least 1")
        from dataclasses import replace

        return replace(self, importers=(self.importers[0],) * n)


RDMA_NIC = ("rdma", "0000:05:00.0")
BUNDLED: dict[str, ModelSpec] = {
    "dmabuf-revoke": ModelSpec(
        "dmabuf-revoke", description="vfio dma-buf export with dynamic importers under every revoke trigger"),
    "importer-ignores-invalidate": ModelSpec(
        "importer-ignores-invalidate", importers=(("ignores-invalidate", "0000:05:00.0"),),
        triggers=("decode-off", "reset", "close"), expect="violated",
        description="an importer that ignores move_notify keeps using a revoked buffer"),
    "pinned-importer": ModelSpec(
        "pinned-importer", importers=(RDMA_NIC,), static=True, triggers=("decode-off", "close"),
        description="a static importer that wants pinning is refused at attach"),
    "provider-no-revoke": ModelSpec(
        "provider-no-revoke", importers=(("peer", "0000:05:00.0"),), mode="provider",
        triggers=("unbind",), expect="violated",
        description="the provider layer alone: the owner unbinds while a peer DMAs"),
    "provider-with-revoke": ModelSpec(
        "provider-with-revoke", importers=(RDMA_NIC,), triggers=("unbind",),
        description="the same memory behind vfio's dma-buf: unbind closes, revokes and waits"),
    "revoke-no-wait": ModelSpec(
        "revoke-no-wait", importers=(RDMA_NIC,), triggers=("decode-off", "reset", "close"),
        wait_for_fences=False, expect="violated",
        description="seeded exporter bug: revoke does not wait for fences"),
}


def load_model(name_or_file: str) -> ModelSpec:
    """A bundled model by name, or one described in a YAML file (keys as ModelSpec's fields)."""
    if name_or_file in BUNDLED:
        return BUNDLED[name_or_file]
    p = Path(name_or_file)
    if p.suffix not in (".yaml", ".yml", ".json"):
        raise InputError(f"unknown model {name_or_file!r} (bundled: {', '.join(BUNDLED)}; or a .yaml file)")
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: top level must be a mapping")
    known = set(ModelSpec.__dataclass_fields__)
    bad = set(data) - known
    if bad:
        raise InputError(f"{p}: unknown keys {sorted(bad)} (known: {sorted(known)})")
    if "importers" in data:
        imps = data["importers"]
        if not isinstance(imps, list) or not all(isinstance(x, dict) and "kind" in x and "dev" in x for x in imps):
            raise InputError(f"{p}: importers must be a list of {{kind, dev}}")
        data["importers"] = tuple((str(x["kind"]), str(x["dev"])) for x in imps)
    if "triggers" in data:
        trig = tuple(str(t) for t in data["triggers"])
        unknown = [t for t in trig if t not in TRIGGERS]
        if unknown:
            raise InputError(f"{p}: unknown triggers {unknown} (known: {', '.join(TRIGGERS)})")
        data["triggers"] = trig
    data.setdefault("name", p.stem)
    spec = ModelSpec(**data)
    for kind, _ in spec.importers:
        if kind not in I.KINDS and kind != "peer":
            raise InputError(f"{p}: unknown importer kind {kind!r}")
    return spec


@dataclass
class CheckState:
    """The checker's own bookkeeping inside the System (so it is copied with it)."""

    exported: int | None = None
    imports: list[int | None] = field(default_factory=list)
    dma_started: list[int] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    peer_addr: list[int | None] = field(default_factory=list)
    peer_inflight: list[bool] = field(default_factory=list)


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
    """An action whose kernel error is part of the behaviour (recorded, not raised)."""

    def run(s: System) -> None:
        try:
            fn(s)
        except P2pdmaError as exc:  # a kernel refusal, or a violation the System recorded
            cstate(s).failed.append(f"{label}: {errno.errorcode.get(exc.errno, exc.errno)}")

    return label, run


def actions(spec: ModelSpec, s: System) -> list[Action]:
    """Every operation enabled in this state, in a fixed order."""
    c = cstate(s)
    out: list[Action] = []
    owner = spec.owner
    vdev = V._st(s).devices.get(owner)
    is_open = vdev is not None and vdev.is_open
    if spec.mode == "vfio" and c.exported is None and is_open:
        def export(s: System) -> None:
            cs = cstate(s)
            cs.exported = V.vfio_device_feature(s, owner, V.dma_buf_request(spec.bar, [(0, 2 * PAGE_SIZE)]))
        out.append(_try("export", export))
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
        if not imp.inflight:
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
