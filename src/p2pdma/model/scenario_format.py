"""The scenario format: a machine, devices bound to vfio-pci or to a driver, and numbered steps (exports,
imports, DMA, faults) run deterministically on the run-time model, with a timeline and a summary.

The YAML format (``p2pdma.scenario/1``)::

    name: seed-story                  # optional (default: the file's name)
    description: what it shows        # optional
    machine: gpu8-switches            # optional: a bundled example, or {example|spec|root|hwloc|lspci|nccl_xml: VALUE}
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
      - reset: gpu                    # also decode-off, decode-on, close, open, unbind, unplug,
                                      # d3hot, d0, flr, hot-reset (Linux 7.2 revoke triggers)
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

This module parses and validates (by type, with the step and field named); scenario.py runs.
"""

from __future__ import annotations

import errno as E
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from p2pdma.errors import InputError
from p2pdma.model import importers as I
from p2pdma.p2p.decide import KERNEL_PROFILES

SCHEMA = "p2pdma.simulate/1"
DEFAULT_SCENARIO = "seed-story"
DEFAULT_MACHINE = "gpu8-switches"
PATHS = ("BUS_ADDR", "THRU_HOST_BRIDGE")
TRIGGERS = ("reset", "decode-off", "decode-on", "close", "open", "unbind", "unplug", "d3hot", "d0", "flr", "hot-reset")
OPS = ("fill", "export", "import", "dma", "start", "finish", "remap", "release", "put", "verify", "note",
       *TRIGGERS)
NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
MAX_BYTES = 1 << 30  # one fill or DMA of a scenario moves at most 1 GiB


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
        kind = I.ALIASES.get(kind, kind) if isinstance(kind, str) else kind
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
        from p2pdma.sources import MACHINE_KINDS  # the forms open_machine() takes

        if not (isinstance(machine, dict) and len(machine) == 1 and next(iter(machine)) in MACHINE_KINDS
                and isinstance(next(iter(machine.values())), str)):
            raise InputError(f"{where}: machine is an example name or one of {{{'|'.join(MACHINE_KINDS)}: VALUE}}")
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
    """Read and parse a scenario file through the project's bounded YAML loader (sources.safeload:
    regular files only, size cap, depth and alias budget); InputError naming the file otherwise."""
    from p2pdma.sources import safeload

    p = Path(path)
    return parse_scenario(safeload.load_path(p, kind="scenario"), where=str(p), default_name=p.stem)


def _parse_text(text: str, where: str, default_name: str) -> Scenario:
    """YAML text to a Scenario through the project's bounded YAML loader (sources.safeload)."""
    from p2pdma.sources import safeload

    return parse_scenario(safeload.loads(text, where, kind="scenario"), where=where, default_name=default_name)


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
