"""Scenarios: a machine, devices bound to vfio-pci or to a driver, and numbered steps (exports,
imports, DMA, faults) run deterministically on the run-time model, with a timeline and a summary.

The YAML format (``p2pdma.scenario/1``)::

    name: seed-story                  # optional (default: the file's name)
    description: what it shows        # optional
    machine: gpu8-switches            # optional: a bundled example, or {example: N} / {spec: FILE} / {root: DIR}
    kernel: latest                    # optional: latest | classic
    iommu: dma                        # optional: dma (translating, default) | identity | off
    seed: 0                           # optional
    devices:                          # names for PCI functions, and what is bound to them
      gpu: {bdf: "0000:03:00.0", bind: vfio}       # vfio-pci, opened by userspace
      nic: {bdf: "0000:05:00.0", bind: mlx5_core}  # any other name: a kernel driver
      # optional per device: dma_bits (default 64); for vfio: wait_for_fences (default true;
      # false seeds the exporter bug of a revoke that does not wait)
    steps:                            # run in order; numbered from 1 in the timeline
      - fill: {device: gpu, bar: 1, offset: 0, size: 4M, pattern: 1}   # the CPU writes the BAR
      - export: {name: buf, device: gpu, bar: 1, ranges: [[0, 4M]]}      # VFIO_DEVICE_FEATURE_DMA_BUF
      - import: {name: rdma, kind: rdma, device: nic, buffer: buf}       # attach + map (static: true)
      - dma: {importer: rdma, read: 0, size: 1M}                         # start and finish one DMA
      - dma: {importer: rdma, write: 1M, size: 4K, pattern: 2}
      - start: {name: r1, importer: rdma, read: 0, size: 64K}            # a DMA left in flight
      - finish: r1                                                       # its bytes move, its fence signals
      - reset: gpu                    # also decode-off, decode-on, close, open, unbind, unplug
      - remap: rdma                   # the importer maps again (iommufd's VMM does this)
      - release: rdma                 # unmap and detach
      - put: buf                      # close the dma-buf fd
      - verify: buf                   # the BAR holds what was last written (or: verify: all)
      - note: free text for the timeline

Any step may be a mapping with ``expect: ok | waits | ERRNO`` (e.g. ``{device: gpu, expect:
waits}`` for a revoke that waits for fences, ``expect: ENODEV`` for a refusal); a step that ends
otherwise is an ``expectation`` violation. Sizes and offsets take K/M/G suffixes and hex.
A refused step is part of the story (shown with its errno), not a failure. Patterns are seeded
bytes, so every run is the same. Data is intact when every read returned what was last written
there and the exported BARs hold what the importers and the CPU last wrote.
"""

from __future__ import annotations

import errno as E
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from p2pdma.errors import InputError, IommuFault, P2pdmaError
from p2pdma.model import dmabuf as B
from p2pdma.model import fabric as F
from p2pdma.model import importers as I
from p2pdma.model import vfio as V
from p2pdma.model.system import System
from p2pdma.p2p.decide import KERNEL_PROFILES
from p2pdma.pci.topology import Topology

SCHEMA = "p2pdma.simulate/1"
DEFAULT_SCENARIO = "seed-story"
DEFAULT_MACHINE = "gpu8-switches"
PATHS = ("BUS_ADDR", "THRU_HOST_BRIDGE")
TRIGGERS = ("reset", "decode-off", "decode-on", "close", "open", "unbind", "unplug")
OPS = ("fill", "export", "import", "dma", "start", "finish", "remap", "release", "put", "verify", "note",
       *TRIGGERS)
NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
MAX_BYTES = 1 << 30  # one fill or DMA of a scenario moves at most 1 GiB


# -- the format ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeviceDecl:
    """A named PCI function and what is bound to it (``vfio`` or a driver name)."""

    name: str
    bdf: str
    bind: str | None
    dma_bits: int = 64
    wait_for_fences: bool = True


@dataclass(frozen=True, slots=True)
class Step:
    """One numbered step: its operation, normalised arguments, and the expected outcome."""

    index: int
    op: str
    args: dict[str, Any]
    expect: str | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario; ``machine`` is still a name or a source mapping (resolved by the caller)."""

    name: str
    description: str
    machine: str | dict[str, str] | None
    kernel: str | None
    iommu: str
    seed: int
    devices: dict[str, DeviceDecl]
    steps: tuple[Step, ...]
    source: str = ""


def size_value(v: Any, what: str) -> int:
    """A non-negative byte count or offset: an int, hex, or a K/M/G/T suffixed number."""
    if isinstance(v, bool):
        raise InputError(f"{what}: expected a number, got {v!r}")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str):
        s = v.strip().upper().removesuffix("IB").removesuffix("B")
        mult = 1
        for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
            if s.endswith(suffix) and not s.startswith("0X"):
                mult, s = m, s[:-1].strip()
                break
        try:
            n = int(s, 0) * mult
        except ValueError:
            raise InputError(f"{what}: expected a number, got {v!r}") from None
    else:
        raise InputError(f"{what}: expected a number, got {v!r}")
    if n < 0 or n >= 1 << 64:
        raise InputError(f"{what}: {v!r} is out of range")
    return n


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not NAME_RE.match(v):
        raise InputError(f"{what}: expected a name (letters, digits, _.:+-), got {v!r}")
    return v


def _errno_name(v: Any, what: str) -> str:
    if isinstance(v, bool) and v:
        return "ok"
    if not isinstance(v, str):
        raise InputError(f"{what}: expect must be ok, waits or an errno name, got {v!r}")
    s = v.strip()
    if s.lower() in ("ok", "waits"):
        return s.lower()
    if s.upper() in E.errorcode.values():
        return s.upper()
    raise InputError(f"{what}: expect must be ok, waits or an errno name, got {v!r}")


class _Args:
    """A step's argument mapping, consumed key by key so that unknown keys are refused."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = dict(raw)
        self.where = where

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.pop(key, default)

    def need(self, key: str) -> Any:
        if key not in self.raw:
            raise InputError(f"{self.where}: missing {key!r}")
        return self.raw.pop(key)

    def done(self) -> None:
        if self.raw:
            raise InputError(f"{self.where}: unknown key(s) {', '.join(sorted(map(str, self.raw)))}")


def _parse_step(i: int, raw: Any, devices: dict[str, DeviceDecl], names: dict[str, str]) -> Step:
    where = f"step {i}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InputError(f"{where}: a step is a mapping with one operation, e.g. '- reset: gpu', got {raw!r}")
    (op, body), = raw.items()
    if op not in OPS:
        raise InputError(f"{where}: unknown operation {op!r} (one of: {', '.join(OPS)})")
    where = f"step {i} ({op})"
    if op == "note":
        if not isinstance(body, str):
            raise InputError(f"{where}: a note is text")
        return Step(i, op, {"text": body})
    # scalar shorthands: 'reset: gpu', 'finish: r1', 'remap: vm', 'verify: buf'
    if not isinstance(body, dict):
        key = {"finish": "name", "remap": "importer", "release": "importer", "put": "buffer",
               "verify": "buffer"}.get(op, "device")
        body = {key: body}
    a = _Args(body, where)
    expect = a.get("expect")
    exp = None if expect is None else _errno_name(expect, where)

    def device(key: str = "device") -> str:
        v = a.need(key)
        if isinstance(v, str) and v in devices:
            return devices[v].bdf
        if isinstance(v, str) and re.match(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$", v):
            return v.lower()
        raise InputError(f"{where}: {key} {v!r} is neither a declared device nor a PCI address")

    def ref(key: str, kind: str) -> str:
        v = _name(a.need(key), f"{where}: {key}")
        if names.get(v) != kind:
            raise InputError(f"{where}: no {kind} named {v!r} was declared by an earlier step")
        return v

    def define(kind: str) -> str:
        v = _name(a.need("name"), f"{where}: name")
        if v in names:
            raise InputError(f"{where}: the name {v!r} is already used by a {names[v]}")
        names[v] = kind
        return v

    def nbytes(key: str, default: Any = None) -> int:
        v = a.get(key, default)
        if v is None:
            raise InputError(f"{where}: missing {key!r}")
        return size_value(v, f"{where}: {key}")

    def direction() -> tuple[bool, int]:
        has_r, has_w = "read" in a.raw, "write" in a.raw
        if has_r == has_w:
            raise InputError(f"{where}: give exactly one of 'read: OFFSET' or 'write: OFFSET'")
        key = "write" if has_w else "read"
        return has_w, size_value(a.get(key), f"{where}: {key}")

    args: dict[str, Any]
    if op == "fill":
        args = {"device": device(), "bar": nbytes("bar"), "offset": nbytes("offset", 0), "size": nbytes("size"),
                "pattern": nbytes("pattern", 1)}
        if not 0 < args["size"] <= MAX_BYTES:
            raise InputError(f"{where}: size must be 1 byte to 1 GiB")
    elif op == "export":
        name = define("buffer")
        dev, bar = device(), nbytes("bar")
        if "ranges" in a.raw:
            rr = a.get("ranges")
            if not isinstance(rr, list) or not all(isinstance(r, list) and len(r) == 2 for r in rr):
                raise InputError(f"{where}: ranges is a list of [offset, length] pairs")
            ranges = [(size_value(o, f"{where}: range offset"), size_value(n, f"{where}: range length"))
                      for o, n in rr]
        else:
            ranges = [(nbytes("offset", 0), nbytes("size"))]
        args = {"name": name, "device": dev, "bar": bar, "ranges": ranges}
    elif op == "import":
        kind = a.need("kind")
        if kind not in I.KINDS:
            raise InputError(f"{where}: kind must be one of {', '.join(I.KINDS)}, got {kind!r}")
        args = {"name": define("importer"), "kind": kind, "device": device(), "buffer": ref("buffer", "buffer"),
                "static": bool(a.get("static", False))}
    elif op in ("dma", "start"):
        op_name = define("dma") if op == "start" else None
        write, offset = direction()
        args = {"name": op_name, "importer": ref("importer", "importer"), "write": write, "offset": offset,
                "size": nbytes("size"), "pattern": nbytes("pattern", 1)}
        if not 0 < args["size"] <= MAX_BYTES:
            raise InputError(f"{where}: size must be 1 byte to 1 GiB")
    elif op == "finish":
        args = {"name": ref("name", "dma")}
    elif op in ("remap", "release"):
        args = {"importer": ref("importer", "importer")}
    elif op == "put":
        args = {"buffer": ref("buffer", "buffer")}
    elif op == "verify":
        v = a.get("buffer", "all")
        args = {"buffer": "all" if v == "all" else ref_value(v, names, where)}
    else:  # triggers
        args = {"device": device()}
    a.done()
    return Step(i, op, args, exp)


def ref_value(v: Any, names: dict[str, str], where: str) -> str:
    """A buffer name given directly (``verify: buf``)."""
    name = _name(v, f"{where}: buffer")
    if names.get(name) != "buffer":
        raise InputError(f"{where}: no buffer named {name!r} was declared by an earlier step")
    return name


def parse_scenario(data: Any, *, where: str = "scenario", default_name: str = "scenario") -> Scenario:
    """Check and normalise a scenario document (InputError naming the first problem)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: a scenario is a YAML mapping with 'devices' and 'steps'")
    known = {"name", "description", "machine", "kernel", "iommu", "seed", "devices", "steps"}
    extra = set(map(str, data)) - known
    if extra:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: name must be text")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise InputError(f"{where}: description must be text")
    machine = data.get("machine")
    if machine is not None and not isinstance(machine, str):
        if not (isinstance(machine, dict) and len(machine) == 1 and next(iter(machine)) in ("example", "spec", "root")
                and isinstance(next(iter(machine.values())), str)):
            raise InputError(f"{where}: machine is an example name or one of {{example|spec|root: VALUE}}")
    kernel = data.get("kernel")
    if kernel is not None and kernel not in KERNEL_PROFILES:
        raise InputError(f"{where}: kernel must be one of {', '.join(KERNEL_PROFILES)}")
    iommu = data.get("iommu", "dma")
    if iommu not in ("dma", "identity", "off"):
        raise InputError(f"{where}: iommu must be dma, identity or off")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{where}: seed must be an integer")
    devices: dict[str, DeviceDecl] = {}
    raw_devs = data.get("devices", {}) or {}
    if not isinstance(raw_devs, dict):
        raise InputError(f"{where}: devices is a mapping of name -> {{bdf, bind}}")
    for dname, d in raw_devs.items():
        dname = _name(dname, f"{where}: device name")
        if not isinstance(d, dict):
            raise InputError(f"{where}: device {dname}: expected {{bdf: ..., bind: ...}}")
        a = _Args(d, f"{where}: device {dname}")
        bdf = a.need("bdf")
        if not isinstance(bdf, str) or not re.match(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$", bdf):
            raise InputError(f"{where}: device {dname}: bdf must be a PCI address like 0000:03:00.0")
        bind = a.get("bind")
        if bind is not None and (not isinstance(bind, str) or not NAME_RE.match(bind)):
            raise InputError(f"{where}: device {dname}: bind is 'vfio' or a driver name")
        bits = a.get("dma_bits", 64)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 12 <= bits <= 64:
            raise InputError(f"{where}: device {dname}: dma_bits must be 12..64")
        wait = a.get("wait_for_fences", True)
        if not isinstance(wait, bool):
            raise InputError(f"{where}: device {dname}: wait_for_fences must be true or false")
        a.done()
        if any(x.bdf == bdf.lower() for x in devices.values()):
            raise InputError(f"{where}: device {dname}: {bdf} is declared twice")
        devices[dname] = DeviceDecl(dname, bdf.lower(), "vfio" if bind == "vfio-pci" else bind, bits, wait)
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InputError(f"{where}: steps is a non-empty list")
    names: dict[str, str] = {}
    steps = tuple(_parse_step(i, s, devices, names) for i, s in enumerate(raw_steps, 1))
    return Scenario(name.strip(), desc.strip(), machine, kernel, iommu, seed, devices, steps, where)


def load_scenario(path: Path | str) -> Scenario:
    """Read and parse a scenario file (InputError for an unreadable file or bad YAML)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return _parse_text(text, str(p), p.stem)


def _parse_text(text: str, where: str, default_name: str) -> Scenario:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_scenario(data, where=where, default_name=default_name)


def bundled_names() -> list[str]:
    """The scenarios bundled with the package, sorted."""
    files = resources.files("p2pdma.model.scenarios")
    return sorted(f.name[:-5] for f in files.iterdir() if f.name.endswith(".yaml"))


def load_bundled(name: str) -> Scenario:
    """A bundled scenario by name; InputError naming the choices when unknown."""
    if name not in bundled_names():
        raise InputError(f"unknown scenario {name!r} (bundled: {', '.join(bundled_names())})")
    text = resources.files("p2pdma.model.scenarios").joinpath(f"{name}.yaml").read_text()
    return _parse_text(text, f"scenario {name}", name)


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
    """Deterministic test data: ``size`` bytes drawn from a generator seeded with ``seed``."""
    return np.random.default_rng([seed, 0x9D]).integers(0, 256, size=size, dtype=np.uint8).tobytes()


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
        self.ops: dict[str, tuple[int, str, bool, int, int, bytes | None]] = {}
        self.shadow: dict[tuple[str, int], F.Memory] = {}
        self.touched: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.mismatches: list[str] = []

    # the reference copy of what should be in each BAR --------------------------------------------
    def _remember(self, bdf: str, bar: int, off: int, data: bytes) -> None:
        self.shadow.setdefault((bdf, bar), F.Memory()).write(off, np.frombuffer(data, dtype=np.uint8))
        self.touched.setdefault((bdf, bar), []).append((off, len(data)))

    def _expected(self, bdf: str, bar: int, off: int, n: int) -> bytes:
        mem = self.shadow.get((bdf, bar))
        return bytes(n) if mem is None else bytes(mem.read(off, n))

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

    def check_read(self, label: str, buf_name: str, offset: int, got: bytes, length: int) -> bool:
        exp = b"".join(self._expected(o, b, bo, n) for o, b, bo, _, n in self._segments(buf_name, offset, length))
        if got != exp:
            self.mismatches.append(f"{label}: read {human(length)} at {offset:#x} of {buf_name} returned "
                                   f"{'no data' if not got else 'other data'} than was last written there")
            return False
        return True

    def verify(self, which: str) -> list[str]:
        bad = []
        keys = sorted(self.touched)
        if which != "all":
            priv = B.state(self.s).bufs[self.bufs[which]].priv
            keys = [k for k in keys if k == (priv.provider.owner, priv.region_index)]
        for owner, bar in keys:
            for off, n in _merge(self.touched[(owner, bar)]):
                if F.cpu_read(self.s, owner, bar, off, n) != self._expected(owner, bar, off, n):
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
        data = pattern_bytes(a["pattern"], a["size"])
        bar = next((b for b in s.topo[a["device"]].bars if b.index == a["bar"] and b.is_mem), None)
        if bar is None or a["offset"] + a["size"] > bar.size:
            raise InputError(f"step {step.index}: {a['device']} has no memory BAR{a['bar']} holding "
                             f"{a['offset']:#x}+{a['size']:#x}")
        F.cpu_write(s, a["device"], a["bar"], a["offset"], data)
        r._remember(a["device"], a["bar"], a["offset"], data)
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
        payload = pattern_bytes(a["pattern"], a["size"]) if a["write"] else None
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


def _finish(r: _Run, op_id: int, imp_name: str, write: bool, offset: int, size: int, data: bytes | None,
            faults0: int) -> str:
    s = r.s
    before = dict(F.state(s).bytes_by_path)
    got = I.finish_dma(s, op_id)
    faulted = len(F.state(s).faults) > faults0
    moved = {p: F.state(s).bytes_by_path[p] - before.get(p, 0) for p in F.state(s).bytes_by_path}
    via = ", ".join(f"{p} {human(n)}" for p, n in moved.items() if n) or "nothing moved"
    buf_name = r.buffer_of(imp_name)
    if faulted:
        return f": IOMMU fault, {via}"
    if write:
        assert data is not None
        for owner, bar, bo, po, n in r._segments(buf_name, offset, size):
            r._remember(owner, bar, bo, data[po : po + n])
        return f": {via}"
    ok = r.check_read(f"{imp_name} DMA {op_id}", buf_name, offset, got, size)
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
           "size_value"]
