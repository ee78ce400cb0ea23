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

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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

MAX_DEVICES = 200_000


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


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise InputError(f"{what}: expected a number, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        s = v.strip().upper()
        mult = 1
        for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
            if s.endswith(suffix) and not s.startswith("0X"):
                mult, s = m, s[:-1]
                break
        try:
            return int(s, 0) * mult
        except ValueError:
            pass
    raise InputError(f"{what}: expected a number, got {v!r}")


def _id(v: Any, what: str) -> tuple[int, int]:
    if not isinstance(v, str) or ":" not in v:
        raise InputError(f"{what}: id must be 'vendor:device' hex, got {v!r}")
    a, _, b = v.partition(":")
    try:
        return int(a, 16), int(b, 16)
    except ValueError:
        raise InputError(f"{what}: id must be 'vendor:device' hex, got {v!r}") from None


class _Alloc:
    """Hands out naturally aligned MMIO and I/O ranges for BARs, per host bridge window."""

    def __init__(self, mem_base: int, mem32_base: int, io_base: int) -> None:
        self.next = {"mem": mem_base, "mem32": mem32_base, "io": io_base}

    def take(self, size: int, kind: str) -> int:
        """``kind`` is ``mem`` (64-bit window), ``mem32`` (below 4 GiB) or ``io``."""
        start = (self.next[kind] + size - 1) // size * size
        self.next[kind] = start + size
        if kind == "mem32" and self.next[kind] > 1 << 32:
            raise InputError(f"32-bit BARs exceed the 4 GiB window (at {start:#x})")
        return start


def _bars(spec: Any, where: str, alloc: _Alloc) -> str:
    lines = []
    items = spec or []
    if not isinstance(items, list) or len(items) > 6:
        raise InputError(f"{where}: bars must be a list of at most 6")
    for b in items:
        if not isinstance(b, dict):
            raise InputError(f"{where}: each BAR must be a mapping")
        size = _int(b.get("size", 0), f"{where}: BAR size")
        if size <= 0 or size & (size - 1):
            raise InputError(f"{where}: BAR size must be a power of two, got {size:#x}")
        io = bool(b.get("io", False))
        flags = IORESOURCE_IO if io else IORESOURCE_MEM
        if b.get("prefetch"):
            flags |= IORESOURCE_PREFETCH
        bits = _int(b.get("bits", 32), f"{where}: BAR bits")
        if bits == 64 and not io:
            flags |= IORESOURCE_MEM_64
        kind = "io" if io else "mem" if bits == 64 else "mem32"
        start = _int(b["start"], f"{where}: BAR start") if "start" in b else alloc.take(size, kind)
        lines.append(f"0x{start:016x} 0x{start + size - 1:016x} 0x{flags:016x}")
        if bits == 64 and not io:
            lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
    lines = lines[:6]
    while len(lines) < 13:
        lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
    return "\n".join(lines) + "\n"


def parse_spec(data: Any, *, where: str = "spec") -> SpecMachine:
    """Turn a spec mapping into raw records. Raises InputError with the offending key's path."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: top level must be a mapping")
    name = str(data.get("name", "spec"))
    cpu = None
    if isinstance(data.get("cpu"), dict):
        c = data["cpu"]
        cpu = Cpu(
            vendor=str(c.get("vendor", "")),
            family=_int(c.get("family", 0), f"{where}: cpu.family"),
            model=_int(c.get("model", 0), f"{where}: cpu.model"),
            model_name=str(c.get("model_name", "")),
            hypervisor=bool(c.get("hypervisor", False)),
        )
    hmat = []
    for i, h in enumerate(data.get("hmat") or []):
        if not isinstance(h, dict) or "initiator" not in h or "target" not in h:
            raise InputError(f"{where}: hmat[{i}] needs initiator and target")
        hmat.append(
            HmatPath(
                initiator=str(h["initiator"]),
                target=str(h["target"]),
                read_bandwidth=_int(h.get("read_bandwidth", 0), f"{where}: hmat[{i}]"),
                write_bandwidth=_int(h.get("write_bandwidth", 0), f"{where}: hmat[{i}]"),
                read_latency=_int(h.get("read_latency", 0), f"{where}: hmat[{i}]"),
                write_latency=_int(h.get("write_latency", 0), f"{where}: hmat[{i}]"),
            )
        )
    raws: list[RawFunction] = []
    hbs: list[str] = []
    proximity: dict[str, int] = {}
    seen: set[str] = set()
    bus_owner: dict[tuple[int, int], str] = {}
    default_cfg = _int(data.get("config_size", 4096), f"{where}: config_size")

    hb_list = data.get("host_bridges")
    if not isinstance(hb_list, list) or not hb_list:
        raise InputError(f"{where}: host_bridges must be a non-empty list")
    for hi, hb in enumerate(hb_list):
        if not isinstance(hb, dict) or "name" not in hb:
            raise InputError(f"{where}: host_bridges[{hi}] needs a name")
        hb_name = str(hb["name"])
        hbs.append(hb_name)
        numa = hb.get("numa_node")
        if "proximity_domain" in hb:
            proximity[hb_name] = _int(hb["proximity_domain"], f"{where}: {hb_name}")
        bus_offset = _int(hb.get("bus_offset", 0), f"{where}: {hb_name}.bus_offset")
        alloc = _Alloc(
            _int(hb.get("mem_base", 0x100_0000_0000 * (hi + 1)), f"{where}: {hb_name}.mem_base"),
            _int(hb.get("mem32_base", 0x8000_0000 + 0x800_0000 * hi), f"{where}: {hb_name}.mem32_base"),
            _int(hb.get("io_base", 0x1000 * (hi + 1)), f"{where}: {hb_name}.io_base"),
        )

        def walk(
            items: Any, parent: str | None, path: str, hb_name: str = hb_name, numa: Any = numa,
            alloc: _Alloc = alloc, bus_offset: int = bus_offset,
        ) -> Iterator[int]:
            """Emit raw records; yields the bus numbers used below so bridges get sec/sub buses."""
            if not isinstance(items, list):
                raise InputError(f"{path}: devices/children must be a list")
            for di, d in enumerate(items):
                dpath = f"{path}[{di}]"
                if not isinstance(d, dict) or "bdf" not in d:
                    raise InputError(f"{dpath}: each device needs a bdf")
                bdf = str(d["bdf"])
                try:
                    dom, bus, slot, fn = parse_bdf(bdf)
                except ValueError as exc:
                    raise InputError(f"{dpath}: {exc}") from None
                owner = bus_owner.setdefault((dom, bus), parent or hb_name)
                if owner != (parent or hb_name):
                    raise InputError(
                        f"{dpath}: bus {dom:04x}:{bus:02x} already belongs below {owner}, not {parent or hb_name}"
                        " (VFs or another bridge's devices sit there)"
                    )
                if bdf in seen:
                    raise InputError(f"{dpath}: duplicate bdf {bdf}")
                seen.add(bdf)
                if len(seen) > MAX_DEVICES:
                    raise InputError(f"{where}: more than {MAX_DEVICES} functions")
                yield bus
                vendor, device = _id(d.get("id", "8086:0000"), dpath)
                children = d.get("children") or []
                child_buses = list(walk(children, bdf, f"{dpath}.children")) if children else []
                port = d.get("port")
                port_type = None
                if port is not None:
                    if port not in cfg.PORT_TYPE_BY_NAME:
                        raise InputError(
                            f"{dpath}: unknown port {port!r} (one of {', '.join(cfg.PORT_TYPE_BY_NAME)})"
                        )
                    port_type = cfg.PORT_TYPE_BY_NAME[port]
                is_bridge = bool(children) or port_type in (
                    cfg.PCI_EXP_TYPE_ROOT_PORT,
                    cfg.PCI_EXP_TYPE_UPSTREAM,
                    cfg.PCI_EXP_TYPE_DOWNSTREAM,
                    cfg.PCI_EXP_TYPE_PCI_BRIDGE,
                    cfg.PCI_EXP_TYPE_PCIE_BRIDGE,
                )
                class_code = _int(d.get("class", 0x060400 if is_bridge else 0x000000), f"{dpath}.class")
                if is_bridge and child_buses:
                    sec, sub = min(child_buses), max(child_buses)
                    if sec <= bus:
                        raise InputError(f"{dpath}: children of {bdf} must sit on a higher bus")
                else:
                    sec = sub = 0
                link = d.get("link") or [None, 0]
                acs = d.get("acs")
                acs_cap = acs_ctrl = None
                egress: tuple[int, ...] = ()
                if isinstance(acs, dict):
                    acs_cap = _int(acs.get("cap", 0x7F), f"{dpath}.acs.cap")
                    acs_ctrl = _int(acs.get("ctrl", 0), f"{dpath}.acs.ctrl")
                    egress = tuple(_int(x, f"{dpath}.acs.egress") for x in acs.get("egress", []))
                size = _int(d.get("config_size", default_cfg), f"{dpath}.config_size")
                if size not in (64, 256, 4096):
                    raise InputError(f"{dpath}: config_size must be 64, 256 or 4096")
                fn_mf = bool(d.get("multifunction", False))
                config = cfg.build(
                    vendor=vendor,
                    device=device,
                    class_code=class_code,
                    header_type=cfg.HEADER_BRIDGE if is_bridge else cfg.HEADER_NORMAL,
                    multifunction=fn_mf,
                    secondary_bus=sec,
                    subordinate_bus=sub,
                    port_type=port_type,
                    port_number=_int(d.get("port_number", 0), f"{dpath}.port_number"),
                    link_speed=float(link[0]) if link[0] is not None else None,
                    link_width=int(link[1]),
                    acs_cap=acs_cap,
                    acs_ctrl=acs_ctrl or 0,
                    egress_vector=egress,
                    size=size,
                )
                group = d.get("iommu_group")  # only when stated: groups come from ACS, not invented
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
                        iommu_group=None if group is None else _int(group, f"{dpath}.iommu_group"),
                        numa_node=None if numa is None else _int(numa, f"{hb_name}.numa_node"),
                        driver=d.get("driver"),
                        bus_offset=bus_offset,
                    )
                )
                vfs = d.get("vfs")
                if isinstance(vfs, dict):
                    count = _int(vfs.get("count", 0), f"{dpath}.vfs.count")
                    vvendor, vdevice = _id(vfs.get("id", d.get("id")), f"{dpath}.vfs")
                    first = vfs.get("first_bdf")
                    vdom, vbus, vslot, vfn = parse_bdf(str(first)) if first else (dom, bus, slot, fn + 1)
                    devfn = (vslot << 3) | vfn
                    for k in range(count):
                        vbdf = format_bdf(vdom, vbus + (devfn + k) // 256, ((devfn + k) % 256) >> 3,
                                          (devfn + k) & 7)
                        vb = vbus + (devfn + k) // 256
                        if vb > 255:
                            raise InputError(f"{dpath}: VF {k} would sit past bus ff")
                        if bus_owner.setdefault((vdom, vb), parent or hb_name) != (parent or hb_name):
                            raise InputError(f"{dpath}: VF {vbdf} lands on bus {vb:02x}, which belongs elsewhere")
                        if vbdf in seen:
                            raise InputError(f"{dpath}: VF {vbdf} collides with another function")
                        seen.add(vbdf)
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
                                resource=_bars(vfs.get("bars"), f"{dpath}.vfs", alloc),
                                iommu_group=None,
                                numa_node=None if numa is None else _int(numa, f"{hb_name}.numa_node"),
                                driver=vfs.get("driver"),
                                bus_offset=bus_offset,
                            )
                        )
                yield from child_buses

        list(walk(hb.get("devices") or [], None, f"{where}: {hb_name}.devices"))

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
        description=str(data.get("description", "")),
        raws=raws,
        host_bridges=hbs,
        cpu=cpu,
        hmat=hmat,
        kernel_release=str(data["kernel"]) if "kernel" in data else None,
        proximity=proximity,
    )


def load_spec(path: Path | str) -> SpecMachine:
    """Read a YAML or JSON spec file; one-line InputError for anything wrong with it."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not valid YAML/JSON ({first})") from None
    return parse_spec(data, where=str(p))
