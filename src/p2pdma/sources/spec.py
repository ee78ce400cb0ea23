"""A compact YAML/JSON description of a machine, turned into the same raw records a sysfs root gives.

Each function is synthesized down to its config-space bytes, so a spec machine takes exactly the
decoding path a real one does. Format (all keys but ``bdf`` optional)::

    name: demo
    cpu: {vendor: GenuineIntel, family: 6, model: 143, model_name: "..."}
    hmat: [{initiator: pci0000:00, target: pci0000:80, read_bandwidth: 20000, ...}]
    host_bridges:
      - name: pci0000:00
        numa_node: 0
        bus_offset: 0
        devices:
          - bdf: 0000:00:01.0
            id: 8086:347a            # vendor:device
            class: 0x060400
            port: root-port          # or switch-upstream, switch-downstream, pcie-to-pci, endpoint, ...
            port_number: 1           # Link Capabilities Port Number
            link: [32.0, 16]         # GT/s, width
            acs: {cap: 0x7f, ctrl: 0x1d, egress: [0x0]}
            config_size: 4096        # 64 models an unprivileged read
            bars: [{size: 0x1000000, prefetch: true, bits: 64}, {size: 256, io: true}]
            vfs: {count: 4, id: 15b3:101e, first_bdf: 0000:03:00.2, bars: [...]}
            multifunction: true      # default: set on every function of a slot with several
            mem32_base / mem_base / io_base (per host bridge): where BARs without ``start`` go
            iommu_group: 7
            driver: nvidia
            children: [...]
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pdma.errors import InputError
from p2pdma.pci import config as cfg
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import (
    IORESOURCE_IO,
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    Cpu,
    HmatPath,
    RawFunction,
    Topology,
    build_topology,
    format_bdf,
    parse_bdf,
)

MAX_FUNCTIONS = 100_000  # functions (PFs and VFs) in one spec, counted before any is built
MAX_DEVICES = MAX_FUNCTIONS  # the old name
MAX_BRIDGE_DEPTH = 64  # bridges above one device; a real machine has fewer than ten
MAX_TOTAL_VFS = 0xFFFF  # SR-IOV TotalVFs is a 16-bit register
MAX_STRING = 4096  # characters of a name, driver or description
U64 = 1 << 64

@dataclass
class SpecMachine:
    """A parsed spec: raw records plus platform facts, ready for build_topology() or write_root()."""

    name: str
    description: str
    raws: list[RawFunction]
    host_bridges: list[str]
    cpu: Cpu | None
    hmat: list[HmatPath]
    kernel_release: str | None
    proximity: dict[str, int] = field(default_factory=dict)

    def topology(self, source: str = "") -> Topology:
        return build_topology(
            self.raws,
            name=self.name,
            host_bridges=self.host_bridges,
            cpu=self.cpu,
            hmat=self.hmat,
            kernel_release=self.kernel_release,
            source=source or f"spec:{self.name}",
            proximity=self.proximity,
            ids=PciIds.find(),
        )


# -- field checks: each names the field's path (``host_bridges[0].devices[2].link``) ---------------
_SUFFIXES = (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("P", 1 << 50), ("E", 1 << 60))
_BDF = re.compile(r"(?P<dom>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])")
_ID = re.compile(r"([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})")
LINK_WIDTHS = range(1, 33)


class SpecError(InputError):
    """A spec field of the wrong type or outside what the kernel (or the hardware) allows."""


def _fail(path: str, msg: str, err: int = errno.EINVAL) -> SpecError:
    return SpecError(f"{path}: {msg}", err)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} characters)"


def _int(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (or a string: ``0x10``, ``16M``) within [lo, hi]."""
    if isinstance(v, bool):
        raise _fail(what, f"expected a number, got {_show(v)}")
    n: int | None = None
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and len(v) <= 80:
        t = v.strip().upper()
        mult = 1
        for suffix, m in _SUFFIXES:
            if t.endswith(suffix) and not t.startswith("0X"):
                mult, t = m, t[:-1]
                break
        try:
            n = int(t, 0) * mult
        except ValueError:
            n = None
    if n is None:
        raise _fail(what, f"expected a number, got {_show(v)}")
    if lo is not None and n < lo or hi is not None and n > hi:
        top = "" if hi is None else (f"{hi:#x}" if hi > 4096 else str(hi))
        rng = f"at least {lo}" if hi is None else f"{lo}..{top}"
        raise _fail(what, f"{_show(v)} is out of range ({rng})", errno.ERANGE)
    return n


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(what, f"expected true or false, got {_show(v)}")
    return v


def _str(v: Any, what: str, *, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise _fail(what, f"expected a string, got {_show(v)}")
    text = str(v)
    if len(text) > MAX_STRING:
        raise _fail(what, f"longer than {MAX_STRING} characters", errno.ENAMETOOLONG)
    return text


def _map(v: Any, what: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(what, f"expected a mapping, got {_show(v)}")
    for k in v:
        if k not in known:
            raise _fail(f"{what}.{k}" if isinstance(k, str) else what,
                        f"unknown field {_show(k)} (known: {', '.join(known)})")
    return v


def _list(v: Any, what: str, most: int | None = None) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _fail(what, f"expected a list, got {_show(v)}")
    if most is not None and len(v) > most:
        raise _fail(what, f"{len(v)} entries, at most {most} allowed", errno.E2BIG)
    return v


def canonical_bdf(v: Any, what: str) -> tuple[str, tuple[int, int, int, int]]:
    """The one spelling of a PCI address (``pci_name()``: 4-digit domain unless it needs more) and its
    parts; 0000:00:00.0 and 00000000:00:00.0 are the same function. Whitespace or a newline is refused."""
    if not isinstance(v, str):
        raise _fail(what, f"a PCI address must be a string like 0000:00:01.0, got {_show(v)}")
    m = _BDF.fullmatch(v)
    if m is None:
        raise _fail(what, f"not a PCI address (DDDD:BB:DD.F): {_show(v)}")
    dom, bus, slot, fn = int(m["dom"], 16), int(m["bus"], 16), int(m["dev"], 16), int(m["fn"])
    if slot > 0x1F:
        raise _fail(what, f"device number {slot:#x} is past 0x1f in {_show(v)}", errno.ERANGE)
    return format_bdf(dom, bus, slot, fn), (dom, bus, slot, fn)


def _id(v: Any, what: str) -> tuple[int, int]:
    if not isinstance(v, str) or _ID.fullmatch(v) is None:
        raise _fail(what, f"id must be 'vendor:device' with 16-bit hex numbers, got {_show(v)}")
    a, _, b = v.partition(":")
    return int(a, 16), int(b, 16)


def _link(v: Any, what: str) -> tuple[float | None, int]:
    """``[GT/s, width]``: a PCIe generation's speed (or null) and a width of 1..32 lanes."""
    if v is None:
        return None, 0
    if not isinstance(v, list) or len(v) != 2:
        raise _fail(what, f"expected [GT/s, width] like [16.0, 16], got {_show(v)}")
    speed_v, width_v = v
    speed: float | None = None
    if speed_v is not None:
        if isinstance(speed_v, bool) or not isinstance(speed_v, (int, float)) or \
                float(speed_v) not in cfg.LINK_SPEED_CODES:
            speeds = ", ".join(f"{x:g}" for x in sorted(cfg.LINK_SPEED_CODES))
            raise _fail(f"{what}[0]", f"{_show(speed_v)} is not a PCIe link speed (GT/s: {speeds})")
        speed = float(speed_v)
    if width_v is None or (speed is None and width_v == 0):
        return speed, 0
    width = _int(width_v, f"{what}[1]", 1, 32)
    return speed, width


def _count_functions(data: dict[str, Any], where: str, max_functions: int) -> None:
    """Count the functions a spec asks for (PFs plus VFs) before building any, so a few kilobytes
    asking for millions are refused without using the memory; also bounds the bridge depth."""
    total = 0
    todo: list[tuple[Any, str, int]] = []
    for hi, hb in enumerate(_list(data.get("host_bridges"), f"{where}: host_bridges")):
        if isinstance(hb, dict):
            todo.append((hb.get("devices"), f"{where}: host_bridges[{hi}].devices", 0))
    while todo:
        items, path, depth = todo.pop()
        if depth > MAX_BRIDGE_DEPTH:
            raise _fail(path, f"bridges nested deeper than {MAX_BRIDGE_DEPTH}", errno.E2BIG)
        for di, d in enumerate(_list(items, path)):
            total += 1
            if isinstance(d, dict):
                vfs = d.get("vfs")
                if isinstance(vfs, dict) and "count" in vfs:
                    total += _int(vfs["count"], f"{path}[{di}].vfs.count", 0, MAX_TOTAL_VFS)
                if d.get("children"):
                    todo.append((d["children"], f"{path}[{di}].children", depth + 1))
            if total > max_functions:
                raise _fail(f"{where}", f"asks for more than {max_functions} functions (PFs and VFs), "
                            f"the limit (max_functions)", errno.E2BIG)


class _Alloc:
    """Hands out naturally aligned MMIO and I/O ranges for BARs, per host bridge window."""

    def __init__(self, mem_base: int, mem32_base: int, io_base: int) -> None:
        self.next = {"mem": mem_base, "mem32": mem32_base, "io": io_base}

    def take(self, size: int, kind: str, what: str) -> int:
        """``kind`` is ``mem`` (64-bit window), ``mem32`` (below 4 GiB) or ``io``."""
        start = (self.next[kind] + size - 1) // size * size
        self.next[kind] = start + size
        if kind == "mem32" and self.next[kind] > 1 << 32:
            raise _fail(what, f"32-bit BARs exceed the 4 GiB window (at {start:#x})", errno.ENOSPC)
        if kind == "io" and self.next[kind] > 1 << 32:
            raise _fail(what, f"I/O BARs exceed the I/O space (at {start:#x})", errno.ENOSPC)
        if self.next[kind] > U64:
            raise _fail(what, f"BARs exceed the 64-bit address space (at {start:#x})", errno.ENOSPC)
        return start


BAR_KEYS = ("size", "io", "prefetch", "bits", "start")


def _bars(spec: Any, where: str, alloc: _Alloc) -> str:
    """The sysfs ``resource`` text for up to six BAR slots (a 64-bit BAR takes two)."""
    lines = []
    items = _list(spec, f"{where}.bars", 6)
    for bi, b in enumerate(items):
        bpath = f"{where}.bars[{bi}]"
        b = _map(b, bpath, BAR_KEYS)
        io = _bool(b.get("io", False), f"{bpath}.io")
        bits = _int(b.get("bits", 32), f"{bpath}.bits")
        if bits not in (32, 64):
            raise _fail(f"{bpath}.bits", f"a BAR has 32 or 64 bits, got {bits}")
        if io and bits == 64:
            raise _fail(f"{bpath}.bits", "an I/O BAR has 32 bits")
        most = 1 << 8 if io else (1 << 31 if bits == 32 else 1 << 63)
        size = _int(b.get("size", 0), f"{bpath}.size", 1, most)
        if size & (size - 1):
            raise _fail(f"{bpath}.size", f"BAR size must be a power of two, got {size:#x}")
        flags = IORESOURCE_IO if io else IORESOURCE_MEM
        if _bool(b.get("prefetch", False), f"{bpath}.prefetch"):
            flags |= IORESOURCE_PREFETCH
        if bits == 64 and not io:
            flags |= IORESOURCE_MEM_64
        kind = "io" if io else "mem" if bits == 64 else "mem32"
        if "start" in b:
            top = (1 << 32) if bits == 32 else U64
            start = _int(b["start"], f"{bpath}.start", 0, top - size)
            if start % size:
                raise _fail(f"{bpath}.start", f"{start:#x} is not aligned to the BAR's size {size:#x}")
        else:
            start = alloc.take(size, kind, bpath)
        lines.append(f"0x{start:016x} 0x{start + size - 1:016x} 0x{flags:016x}")
        if bits == 64 and not io:
            lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
        if len(lines) > 6:
            raise _fail(f"{where}.bars", "more than six BAR slots (a 64-bit BAR takes two)")
    while len(lines) < 13:
        lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
    return "\n".join(lines) + "\n"


TOP_KEYS = ("name", "description", "cpu", "hmat", "host_bridges", "kernel", "config_size")
CPU_KEYS = ("vendor", "family", "model", "model_name", "hypervisor")
HMAT_KEYS = ("initiator", "target", "read_bandwidth", "write_bandwidth", "read_latency", "write_latency")
HB_KEYS = ("name", "numa_node", "proximity_domain", "bus_offset", "mem_base", "mem32_base", "io_base", "devices")
DEVICE_KEYS = ("bdf", "id", "class", "port", "port_number", "link", "acs", "config_size", "bars", "vfs",
               "multifunction", "iommu_group", "driver", "children")
ACS_KEYS = ("cap", "ctrl", "egress")
VF_KEYS = ("count", "id", "first_bdf", "bars", "driver")
BRIDGE_PORTS = (cfg.PCI_EXP_TYPE_ROOT_PORT, cfg.PCI_EXP_TYPE_UPSTREAM, cfg.PCI_EXP_TYPE_DOWNSTREAM,
                cfg.PCI_EXP_TYPE_PCI_BRIDGE, cfg.PCI_EXP_TYPE_PCIE_BRIDGE)


def _acs(acs: Any, path: str) -> tuple[int | None, int, tuple[int, ...]]:
    """(cap, ctrl, egress dwords): 16-bit registers; the egress vector holds at most 256 bits and no
    more than the capability's Egress Control Vector Size (bits 15:8, 0 meaning 256)."""
    if acs is None:
        return None, 0, ()
    a = _map(acs, path, ACS_KEYS)
    cap = _int(a.get("cap", 0x7F), f"{path}.cap", 0, 0xFFFF)
    ctrl = _int(a.get("ctrl", 0), f"{path}.ctrl", 0, 0xFFFF)
    eg = _list(a.get("egress"), f"{path}.egress", 8)
    egress = tuple(_int(x, f"{path}.egress[{i}]", 0, 0xFFFF_FFFF) for i, x in enumerate(eg))
    if egress:
        bits = (cap >> 8) & 0xFF or 256
        if len(egress) > (bits + 31) // 32:
            raise _fail(f"{path}.egress", f"{len(egress)} dwords, but the capability's vector has {bits} bits")
    return cap, ctrl, egress


def parse_spec(data: Any, *, where: str = "spec", max_functions: int = MAX_FUNCTIONS) -> SpecMachine:
    """Turn a spec mapping into raw records. Every field is checked for type and range; a SpecError
    (InputError) names the field's path, e.g. ``spec.yaml: host_bridges[0].devices[2].link``."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: top level must be a mapping")
    _map(data, where, TOP_KEYS)
    _count_functions(data, where, max_functions)
    name = _str(data.get("name", "spec"), f"{where}: name") or "spec"
    cpu = None
    if data.get("cpu") is not None:
        c = _map(data["cpu"], f"{where}: cpu", CPU_KEYS)
        cpu = Cpu(
            vendor=_str(c.get("vendor", ""), f"{where}: cpu.vendor") or "",
            family=_int(c.get("family", 0), f"{where}: cpu.family", 0, 0xFFFF),
            model=_int(c.get("model", 0), f"{where}: cpu.model", 0, 0xFFFF),
            model_name=_str(c.get("model_name", ""), f"{where}: cpu.model_name") or "",
            hypervisor=_bool(c.get("hypervisor", False), f"{where}: cpu.hypervisor"),
        )
    hmat = []
    for i, h in enumerate(_list(data.get("hmat"), f"{where}: hmat", 65536)):
        hp = f"{where}: hmat[{i}]"
        h = _map(h, hp, HMAT_KEYS)
        if "initiator" not in h or "target" not in h:
            raise SpecError(f"{hp} needs initiator and target")
        hmat.append(
            HmatPath(
                initiator=_str(h["initiator"], f"{hp}.initiator") or "",
                target=_str(h["target"], f"{hp}.target") or "",
                **{k: _int(h.get(k, 0), f"{hp}.{k}", 0, 0xFFFF_FFFF) for k in HMAT_KEYS[2:]},
            )
        )
    raws: list[RawFunction] = []
    hbs: list[str] = []
    proximity: dict[str, int] = {}
    seen: dict[str, str] = {}  # canonical BDF -> path of the field that declared it
    bus_owner: dict[tuple[int, int], str] = {}
    default_cfg = _int(data.get("config_size", 4096), f"{where}: config_size")
    if default_cfg not in (64, 256, 4096):
        raise SpecError(f"{where}: config_size: must be 64, 256 or 4096, got {default_cfg}")

    hb_list = data.get("host_bridges")
    if not isinstance(hb_list, list) or not hb_list:
        raise SpecError(f"{where}: host_bridges must be a non-empty list")
    for hi, hb in enumerate(hb_list):
        hpath = f"{where}: host_bridges[{hi}]"
        if not isinstance(hb, dict) or "name" not in hb:
            raise SpecError(f"{hpath} needs a name")
        _map(hb, hpath, HB_KEYS)
        hb_name = _str(hb["name"], f"{hpath}.name") or ""
        if hb_name in hbs:
            raise SpecError(f"{hpath}.name: duplicate host bridge {hb_name!r}")
        hbs.append(hb_name)
        numa_v = hb.get("numa_node")
        numa = None if numa_v is None else _int(numa_v, f"{hpath}.numa_node", -1, 1 << 16)
        if "proximity_domain" in hb:
            proximity[hb_name] = _int(hb["proximity_domain"], f"{hpath}.proximity_domain", 0, 0xFFFF_FFFF)
        bus_offset = _int(hb.get("bus_offset", 0), f"{hpath}.bus_offset", -(1 << 63), (1 << 63) - 1)
        alloc = _Alloc(
            _int(hb.get("mem_base", 0x100_0000_0000 * (hi + 1)), f"{hpath}.mem_base", 0, U64 - 1),
            _int(hb.get("mem32_base", 0x8000_0000 + 0x800_0000 * (hi % 16)), f"{hpath}.mem32_base", 0, 0xFFFF_FFFF),
            _int(hb.get("io_base", 0x1000 * (hi + 1)), f"{hpath}.io_base", 0, 0xFFFF_FFFF),
        )

        def walk(
            items: Any, parent: str | None, path: str, hb_name: str = hb_name, numa: int | None = numa,
            alloc: _Alloc = alloc, bus_offset: int = bus_offset,
        ) -> Iterator[int]:
            """Emit raw records; yields the bus numbers used below so bridges get sec/sub buses."""
            for di, d in enumerate(_list(items, path)):
                dpath = f"{path}[{di}]"
                if not isinstance(d, dict) or "bdf" not in d:
                    raise SpecError(f"{dpath}: each device needs a bdf")
                _map(d, dpath, DEVICE_KEYS)
                bdf, (dom, bus, slot, fn) = canonical_bdf(d["bdf"], f"{dpath}.bdf")
                owner = bus_owner.setdefault((dom, bus), parent or hb_name)
                if owner != (parent or hb_name):
                    raise SpecError(
                        f"{dpath}: bus {dom:04x}:{bus:02x} already belongs below {owner}, not {parent or hb_name}"
                        " (VFs or another bridge's devices sit there)"
                    )
                if bdf in seen:
                    raise SpecError(f"{dpath}.bdf: duplicate bdf {bdf} (also {seen[bdf]})")
                seen[bdf] = f"{dpath}.bdf"
                yield bus
                vendor, device = _id(d.get("id", "8086:0000"), f"{dpath}.id")
                children = _list(d.get("children"), f"{dpath}.children")
                child_buses = list(walk(children, bdf, f"{dpath}.children")) if children else []
                port = d.get("port")
                port_type = None
                if port is not None:
                    if not isinstance(port, str) or port not in cfg.PORT_TYPE_BY_NAME:
                        raise SpecError(
                            f"{dpath}.port: unknown port {_show(port)} (one of {', '.join(cfg.PORT_TYPE_BY_NAME)})"
                        )
                    port_type = cfg.PORT_TYPE_BY_NAME[port]
                is_bridge = bool(children) or port_type in BRIDGE_PORTS
                class_code = _int(d.get("class", 0x060400 if is_bridge else 0x000000), f"{dpath}.class",
                                  0, 0xFFFFFF)
                if is_bridge and child_buses:
                    sec, sub = min(child_buses), max(child_buses)
                    if sec <= bus:
                        raise SpecError(f"{dpath}: children of {bdf} must sit on a higher bus")
                else:
                    sec = sub = 0
                speed, width = _link(d.get("link"), f"{dpath}.link")
                acs_cap, acs_ctrl, egress = _acs(d.get("acs"), f"{dpath}.acs")
                size = _int(d.get("config_size", default_cfg), f"{dpath}.config_size")
                if size not in (64, 256, 4096):
                    raise SpecError(f"{dpath}.config_size: must be 64, 256 or 4096, got {size}")
                fn_mf = _bool(d.get("multifunction", False), f"{dpath}.multifunction")
                config = cfg.build(
                    vendor=vendor,
                    device=device,
                    class_code=class_code,
                    header_type=cfg.HEADER_BRIDGE if is_bridge else cfg.HEADER_NORMAL,
                    multifunction=fn_mf,
                    secondary_bus=sec,
                    subordinate_bus=sub,
                    port_type=port_type,
                    port_number=_int(d.get("port_number", 0), f"{dpath}.port_number", 0, 0xFF),
                    link_speed=speed,
                    link_width=width,
                    acs_cap=acs_cap,
                    acs_ctrl=acs_ctrl,
                    egress_vector=egress,
                    size=size,
                )
                group = d.get("iommu_group")  # only when stated: groups come from ACS, not invented
                driver = _str(d.get("driver"), f"{dpath}.driver", optional=True)
                raws.append(
                    RawFunction(
                        bdf=bdf,
                        host_bridge=hb_name,
                        parent_bdf=parent,
                        config=config,
                        vendor=vendor,
                        device=device,
                        class_code=class_code,
                        resource=_bars(d.get("bars"), dpath, alloc),
                        iommu_group=None if group is None else _int(group, f"{dpath}.iommu_group", 0, 0x7FFF_FFFF),
                        numa_node=numa,
                        driver=driver,
                        bus_offset=bus_offset,
                    )
                )
                if d.get("vfs") is not None:
                    _vfs(d["vfs"], f"{dpath}.vfs", d, bdf, (dom, bus, slot, fn), parent, class_code, port_type, size)
                yield from child_buses

        def _vfs(vfs_v: Any, vpath: str, d: dict[str, Any], bdf: str, addr: tuple[int, int, int, int],
                 parent: str | None, class_code: int, port_type: int | None, size: int,
                 hb_name: str = hb_name, numa: int | None = numa, alloc: _Alloc = alloc,
                 bus_offset: int = bus_offset) -> None:
            vfs = _map(vfs_v, vpath, VF_KEYS)
            count = _int(vfs.get("count", 0), f"{vpath}.count", 0, MAX_TOTAL_VFS)
            vvendor, vdevice = _id(vfs.get("id", d.get("id", "8086:0000")), f"{vpath}.id")
            first = vfs.get("first_bdf")
            dom, bus, slot, fn = addr
            if first is not None:
                _, (vdom, vbus, vslot, vfn) = canonical_bdf(first, f"{vpath}.first_bdf")
            else:
                vdom, vbus, vslot, vfn = dom, bus, slot, fn + 1
            devfn = (vslot << 3) | vfn
            if count and vbus + (devfn + count - 1) // 256 > 255:
                raise SpecError(f"{vpath}.count: {count} VFs from {vbus:02x}:{vslot:02x}.{vfn} would sit past bus ff")
            vdriver = _str(vfs.get("driver"), f"{vpath}.driver", optional=True)
            for k in range(count):
                vb = vbus + (devfn + k) // 256
                vbdf = format_bdf(vdom, vb, ((devfn + k) % 256) >> 3, (devfn + k) & 7)
                if bus_owner.setdefault((vdom, vb), parent or hb_name) != (parent or hb_name):
                    raise SpecError(f"{vpath}: VF {vbdf} lands on bus {vb:02x}, which belongs elsewhere")
                if vbdf in seen:
                    raise SpecError(f"{vpath}: VF {vbdf} collides with another function ({seen[vbdf]})")
                seen[vbdf] = vpath
                vcfg = cfg.build(
                    vendor=vvendor,
                    device=vdevice,
                    class_code=class_code,
                    port_type=cfg.PCI_EXP_TYPE_ENDPOINT if port_type is not None else None,
                    size=size,
                )
                raws.append(
                    RawFunction(
                        bdf=vbdf,
                        host_bridge=hb_name,
                        parent_bdf=parent,
                        physfn=bdf,
                        config=vcfg,
                        vendor=vvendor,
                        device=vdevice,
                        class_code=class_code,
                        resource=_bars(vfs.get("bars"), vpath, alloc),
                        iommu_group=None,
                        numa_node=numa,
                        driver=vdriver,
                        bus_offset=bus_offset,
                    )
                )

        list(walk(hb.get("devices"), None, f"{hpath}.devices"))

    # A slot with several (non-VF) functions: function 0 carries the multi-function header bit, as
    # the kernel needs to scan the others (pci_scan_slot()).
    slots: dict[tuple[int, int, int], int] = {}
    for r in raws:
        if r.physfn is None:
            dom, bus, slot, _ = parse_bdf(r.bdf)
            slots[(dom, bus, slot)] = slots.get((dom, bus, slot), 0) + 1
    for r in raws:
        dom, bus, slot, _ = parse_bdf(r.bdf)
        if r.physfn is None and slots[(dom, bus, slot)] > 1 and r.config is not None:
            buf = bytearray(r.config)
            buf[cfg.PCI_HEADER_TYPE] |= cfg.PCI_HEADER_TYPE_MFD
            r.config = bytes(buf)

    return SpecMachine(
        name=name,
        description=_str(data.get("description", ""), f"{where}: description") or "",
        raws=raws,
        host_bridges=hbs,
        cpu=cpu,
        hmat=hmat,
        kernel_release=_str(data["kernel"], f"{where}: kernel") if data.get("kernel") is not None else None,
        proximity=proximity,
    )


def load_spec(path: Path | str, *, max_functions: int = MAX_FUNCTIONS) -> SpecMachine:
    """Read a YAML or JSON spec file through the reading layer (regular file, size cap, safe loader);
    one-line InputError for anything wrong with it."""
    from p2pdma.sources import files, safeload

    p = Path(path)
    data = safeload.load_file(p, kind="spec")
    return parse_spec(data, where=files.shown(p), max_functions=max_functions)
