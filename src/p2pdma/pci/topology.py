"""Frozen topology objects: one PCI function each, host bridges, the CPU, firmware P2P paths.

Every source (live sysfs, a captured root, a spec, hwloc XML) produces ``RawFunction`` records and
calls ``build_topology()``; all kernel-visible facts are then derived in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from p2pdma.pci import config as cfg
from p2pdma.pci.ids import PciIds

# include/linux/ioport.h resource flags, as sysfs ``resource`` prints them
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000
IORESOURCE_UNSET = 0x20000000
IORESOURCE_DISABLED = 0x10000000

PCI_STD_NUM_BARS = 6
PCI_IOV_RESOURCES = 7  # first SR-IOV resource index in sysfs ``resource``

BDF_RE = re.compile(r"^(?P<dom>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$")
HOST_BRIDGE_RE = re.compile(r"^pci(?P<dom>[0-9a-fA-F]{4,8}):(?P<bus>[0-9a-fA-F]{2})$")


def parse_bdf(text: str) -> tuple[int, int, int, int]:
    """Split ``DDDD:BB:DD.F`` (the domain may exceed 16 bits) into integers; ValueError if not one."""
    m = BDF_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a PCI address: {text!r}")
    return int(m["dom"], 16), int(m["bus"], 16), int(m["dev"], 16), int(m["fn"])


def format_bdf(domain: int, bus: int, dev: int, fn: int) -> str:
    """The kernel's ``pci_name()`` form: 4-digit domain, more digits when the domain needs them."""
    return f"{domain:04x}:{bus:02x}:{dev:02x}.{fn}"


@dataclass(frozen=True, slots=True)
class Bar:
    """One BAR from sysfs ``resource``: CPU physical range, flags, and the PCI bus address."""

    index: int
    start: int
    end: int
    flags: int
    bus_start: int

    @property
    def size(self) -> int:
        return 0 if self.end < self.start or self.start == self.end == 0 else self.end - self.start + 1

    @property
    def is_mem(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM)

    @property
    def is_io(self) -> bool:
        return bool(self.flags & IORESOURCE_IO)

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & IORESOURCE_PREFETCH)

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def bus_offset(self) -> int:
        """Bus address minus CPU physical address (``pci_bus_address() - pci_resource_start()``)."""
        return self.bus_start - self.start

    def describe(self) -> str:
        kind = "io" if self.is_io else "mem" if self.is_mem else "?"
        extra = ("64" if self.is_64bit else "") + (",pref" if self.prefetchable else "")
        return f"BAR{self.index} {kind}{extra} {self.start:#x}-{self.end:#x} ({self.size} bytes)"


@dataclass(frozen=True, slots=True)
class P2pmem:
    """A function's ``p2pmem/`` attributes (size_show(), available_show(), published_show() in
    drivers/pci/p2pdma.c): bytes registered, bytes free, whether published; None when not read."""

    size: int | None = None
    available: int | None = None
    published: bool | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One PCI function as the kernel sees it, with its decoded config and where it hangs.

    ``parent`` is ``pci_upstream_bridge()``: the bridge above the bus the function sits on, taken
    from the physical function for a VF (``pci_physfn()``); None on a root bus.
    """

    bdf: str
    domain: int
    bus: int
    slot: int
    func: int
    vendor: int
    device: int
    class_code: int
    header_type: int
    multifunction: bool
    port_type: int | None
    port_type_inferred: bool
    port_number: int | None
    max_speed: float | None
    max_width: int | None
    cur_speed: float | None
    cur_width: int | None
    acs: cfg.Acs | None
    acs_known: bool
    config_size: int
    parent: str | None
    physfn: str | None
    host_bridge: str
    bars: tuple[Bar, ...] = ()
    iommu_group: int | None = None
    numa_node: int | None = None
    driver: str | None = None
    vendor_name: str | None = None
    device_name: str | None = None
    class_name: str | None = None
    os_names: tuple[str, ...] = ()  # the OS's names below the function: net, infiniband, nvme, drm
    local_cpulist: str | None = None
    p2pmem: P2pmem | None = None

    @property
    def devfn(self) -> int:
        return (self.slot << 3) | self.func

    @property
    def is_bridge(self) -> bool:
        return self.header_type in (cfg.HEADER_BRIDGE, cfg.HEADER_CARDBUS)

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    @property
    def kind(self) -> str:
        """``endpoint`` for a type 0 header, ``bridge`` otherwise (the matrix JSON's ``kind``)."""
        return "bridge" if self.is_bridge else "endpoint"

    @property
    def port_type_name(self) -> str | None:
        if self.port_type is None:
            return None
        return cfg.PORT_TYPE_NAMES.get(self.port_type, f"type{self.port_type}")

    @property
    def label(self) -> str:
        """A short human name: device name from pci.ids when known, else vendor:device."""
        if self.device_name:
            return self.device_name
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass(frozen=True, slots=True)
class HostBridge:
    """A PCI host bridge (``pciDDDD:BB`` in sysfs) and the device the whitelist looks at.

    ``host_dev`` mirrors ``pci_host_bridge_dev()``: the first device on the root bus if it is
    devfn 00.0 or a PCIe Root Port, else None.
    """

    name: str
    domain: int
    bus: int
    root_devices: tuple[str, ...]
    host_dev: str | None
    proximity_domain: int | None = None
    # False when the input cannot show the device pci_host_bridge_dev() would pick (NCCL XML lists
    # none, hwloc drops 00.0, a filtered lspci dump): ``host_dev`` is then None, never a stand-in.
    host_bridge_dev_known: bool = True


@dataclass(frozen=True, slots=True)
class Cpu:
    """The boot CPU, as ``cpu_supports_p2pdma()`` and VM detection need it."""

    vendor: str
    family: int
    model: int = 0
    model_name: str = ""
    hypervisor: bool = False


@dataclass(frozen=True, slots=True)
class HmatPath:
    """An HMAT PCIe P2P structure: an ordered path from the initiator host bridge to the target's.

    Bandwidth in MB/s and latency in ps as ``struct access_coordinate``; 0 means not given.
    """

    initiator: str
    target: str
    read_bandwidth: int = 0
    write_bandwidth: int = 0
    read_latency: int = 0
    write_latency: int = 0


@dataclass(slots=True)
class RawFunction:
    """What a source knows of one function before the kernel's rules are applied."""

    bdf: str
    host_bridge: str
    parent_bdf: str | None = None
    physfn: str | None = None
    config: bytes | None = None
    vendor: int | None = None
    device: int | None = None
    class_code: int | None = None
    resource: str | None = None
    iommu_group: int | None = None
    numa_node: int | None = None
    driver: str | None = None
    max_speed: float | None = None
    max_width: int | None = None
    cur_speed: float | None = None
    cur_width: int | None = None
    bus_offset: int = 0
    # The kernel's cfg_size (sysfs ``config`` file size on a live system) when known: a read
    # shorter than it means we were not allowed to see everything.
    config_space_size: int | None = None
    # Facts a source states outright (hwloc, spec) when it has no config bytes
    header_type: int | None = None
    port_type: int | None = None
    os_names: tuple[str, ...] = ()
    local_cpulist: str | None = None
    p2pmem: P2pmem | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    """One machine's PCI tree plus the platform facts the P2P decision reads."""

    name: str
    devices: tuple[Device, ...]
    host_bridges: tuple[HostBridge, ...]
    cpu: Cpu | None = None
    hmat: tuple[HmatPath, ...] = ()
    kernel_release: str | None = None
    warnings: tuple[str, ...] = ()
    source: str = ""
    dmi: tuple[tuple[str, str], ...] = ()  # sys/class/dmi/id fields anyone may read
    iommu_units: tuple[str, ...] | None = None  # sys/class/iommu entries; None: the source does not say
    iommu_group_types: tuple[tuple[int, str], ...] = ()  # (group, default domain type)
    # GPU pairs (BDF, BDF), both orders, joined by NVLink/NVSwitch (hwloc, NCCL): not a PCIe path
    nvlinks: frozenset[tuple[str, str]] = frozenset()
    index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    hb_index: dict[str, int] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        self.index.update({d.bdf: i for i, d in enumerate(self.devices)})
        self.hb_index.update({h.name: i for i, h in enumerate(self.host_bridges)})

    def __getitem__(self, bdf: str) -> Device:
        return self.devices[self.index[bdf]]

    def __contains__(self, bdf: object) -> bool:
        return bdf in self.index

    def host_bridge(self, name: str) -> HostBridge:
        return self.host_bridges[self.hb_index[name]]

    def chain(self, bdf: str) -> list[Device]:
        """The device and its upstream bridges, bottom-up (the kernel's ``pci_upstream_bridge()`` walk)."""
        out = []
        cur: str | None = bdf
        while cur is not None:
            d = self[cur]
            out.append(d)
            cur = d.parent
        return out

    def children(self, bdf: str | None, host_bridge: str | None = None) -> list[Device]:
        """Functions whose upstream bridge is ``bdf`` (or on the root bus of ``host_bridge``)."""
        return [
            d
            for d in self.devices
            if d.parent == bdf and (bdf is not None or d.host_bridge == host_bridge)
        ]

    def resolve(self, name: str) -> Device:
        """Find a device by full BDF or unique short form (``01:00.0``); KeyError when none/ambiguous."""
        if name in self.index:
            return self[name]
        matches = [d for d in self.devices if d.bdf.endswith(name) and len(name) >= 4]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(name)

    @property
    def endpoints(self) -> list[Device]:
        return [d for d in self.devices if not d.is_bridge]


_UNUSED_RESOURCE = " ".join(["0x0000000000000000"] * 3)


def _parse_resource(text: str | None, bus_offset: int) -> tuple[Bar, ...]:
    """Parse sysfs ``resource``: one ``start end flags`` line per resource; the first 6 are BARs."""
    if not text:
        return ()
    bars = []
    for i, line in enumerate(text.splitlines()[:PCI_STD_NUM_BARS]):
        if line == _UNUSED_RESOURCE:
            continue  # what the kernel prints for an unused BAR: skipped below too, without parsing
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"resource line {i + 1} is not 'start end flags': {line!r}")
        start, end, flags = (int(p, 16) for p in parts)
        if flags == 0 and start == 0 and end == 0:
            continue
        bars.append(Bar(index=i, start=start, end=end, flags=flags, bus_start=start + bus_offset))
    return tuple(bars)


def _acs_known(info: cfg.ConfigInfo | None, raw: RawFunction) -> bool:
    """Whether we saw all the config space the kernel sees, so an absent ACS capability is real.

    4096 bytes: everything. 256 bytes: complete for a conventional function (no PCIe capability)
    or when the kernel's own cfg_size is 256 (no extended space, so the kernel sees no ACS either).
    """
    if info is None:
        return False
    if info.ext_readable:
        return True
    if info.size >= cfg.PCI_CFG_SPACE_SIZE and info.caps_readable:
        return info.pcie is None or raw.config_space_size == info.size
    return False


def _devfn_key(raw: RawFunction) -> tuple[int, int, int]:
    _, bus, dev, fn = parse_bdf(raw.bdf)
    return (1 if raw.physfn else 0, bus, (dev << 3) | fn)


def build_topology(
    raws: Sequence[RawFunction],
    *,
    name: str,
    host_bridges: Iterable[str] = (),
    cpu: Cpu | None = None,
    hmat: Sequence[HmatPath] = (),
    kernel_release: str | None = None,
    warnings: Sequence[str] = (),
    source: str = "",
    ids: PciIds | None = None,
    proximity: dict[str, int] | None = None,
) -> Topology:
    """Apply the kernel's view to raw records: decode config, resolve parents, pick host bridge devs.

    Bad records become warnings (one line naming the function), never exceptions.
    """
    warn = list(warnings)
    by_bdf: dict[str, RawFunction] = {}
    addr: dict[str, tuple[int, int, int, int]] = {}  # parse_bdf() of each kept BDF, parsed once
    for r in raws:
        try:
            addr[r.bdf] = parse_bdf(r.bdf)
        except ValueError:
            warn.append(f"{r.bdf}: not a PCI address, skipped")
            continue
        by_bdf[r.bdf] = r

    decoded: dict[str, cfg.ConfigInfo | None] = {}
    for bdf, r in by_bdf.items():
        info = None
        if r.config is not None:
            try:
                info = cfg.decode(r.config)
            except ValueError as exc:
                warn.append(f"{bdf}: config: {exc}")
        decoded[bdf] = info

    def header_of(bdf: str) -> int:
        info = decoded[bdf]
        if info is not None:
            return info.header_type
        r = by_bdf[bdf]
        if r.header_type is not None:
            return r.header_type
        return cfg.HEADER_BRIDGE if (r.class_code or 0) >> 8 == 0x0604 else cfg.HEADER_NORMAL

    # pci_upstream_bridge(): the PF's parent for a VF; a parent that is not a known bridge is a
    # broken record (warn and hang the function on the root bus).
    parents: dict[str, str | None] = {}
    for bdf, r in by_bdf.items():
        src = by_bdf.get(r.physfn) if r.physfn else r
        if r.physfn and src is None:
            warn.append(f"{bdf}: physfn {r.physfn} is not in the tree; treating the VF as its own PF")
            src = r
        assert src is not None
        p = src.parent_bdf
        if p is not None and p not in by_bdf:
            warn.append(f"{bdf}: parent {p} is not in the tree; placed on the root bus")
            p = None
        parents[bdf] = p

    # Refuse cycles (a hostile or corrupt tree): break them at the first repeat.
    acyclic: set[str] = set()  # functions whose upstream walk is known to end at a root bus
    for bdf in by_bdf:
        seen = {bdf}
        cur = parents[bdf]
        path = [bdf]
        while cur is not None:
            if cur in acyclic:
                break
            if cur in seen:
                warn.append(f"{bdf}: upstream bridges form a loop at {cur}; placed on the root bus")
                parents[bdf] = None
                path = [bdf]  # now on the root bus; the rest may still loop among themselves
                break
            seen.add(cur)
            path.append(cur)
            cur = parents[cur]
        acyclic.update(path)

    # Port types: from the PCIe capability when readable, else inferred from the tree's shape.
    port_types: dict[str, tuple[int | None, bool]] = {}

    def port_type(bdf: str) -> tuple[int | None, bool]:
        if bdf in port_types:
            return port_types[bdf]
        info = decoded[bdf]
        result: tuple[int | None, bool]
        if info is not None and info.pcie is not None:
            result = (info.pcie.port_type, False)
        elif by_bdf[bdf].port_type is not None:
            result = (by_bdf[bdf].port_type, False)
        elif header_of(bdf) == cfg.HEADER_BRIDGE and (info is None or not info.caps_readable):
            p = parents[bdf]
            if p is None:
                result = (cfg.PCI_EXP_TYPE_ROOT_PORT, True)
            else:
                pt, _ = port_type(p)
                if pt in (cfg.PCI_EXP_TYPE_ROOT_PORT, cfg.PCI_EXP_TYPE_DOWNSTREAM):
                    result = (cfg.PCI_EXP_TYPE_UPSTREAM, True)
                elif pt == cfg.PCI_EXP_TYPE_UPSTREAM:
                    result = (cfg.PCI_EXP_TYPE_DOWNSTREAM, True)
                else:
                    result = (None, False)
        else:
            result = (None, False)
        port_types[bdf] = result
        return result

    devices: list[Device] = []
    for bdf in sorted(by_bdf, key=addr.__getitem__):
        r = by_bdf[bdf]
        info = decoded[bdf]
        dom, bus, slot, fn = addr[bdf]
        vendor = info.vendor if info else (r.vendor if r.vendor is not None else 0xFFFF)
        device = info.device if info else (r.device if r.device is not None else 0xFFFF)
        class_code = info.class_code if info else (r.class_code or 0)
        if info and r.physfn and info.vendor == 0xFFFF:
            # a VF's own config space reads 0xffff IDs by design; the kernel takes them from the PF
            vendor = r.vendor if r.vendor is not None else vendor
            device = r.device if r.device is not None else device
        elif info and r.vendor is not None and info.vendor != r.vendor:
            warn.append(f"{bdf}: config vendor {info.vendor:#06x} differs from sysfs vendor {r.vendor:#06x}")
        pt, inferred = port_type(bdf)
        pcie = info.pcie if info else None
        try:
            bars = _parse_resource(r.resource, r.bus_offset)
        except ValueError as exc:
            warn.append(f"{bdf}: resource: {exc}")
            bars = ()
        vname = dname = cname = None
        if ids is not None:
            vname, dname = ids.names(vendor, device)
            cname = ids.class_name(class_code)
        devices.append(
            Device(
                bdf=bdf,
                domain=dom,
                bus=bus,
                slot=slot,
                func=fn,
                vendor=vendor,
                device=device,
                class_code=class_code,
                header_type=header_of(bdf),
                multifunction=info.multifunction if info else False,
                port_type=pt,
                port_type_inferred=inferred,
                port_number=pcie.port_number if pcie else None,
                max_speed=r.max_speed if r.max_speed is not None else (pcie.max_speed if pcie else None),
                max_width=r.max_width if r.max_width is not None else (pcie.max_width if pcie else None),
                cur_speed=r.cur_speed if r.cur_speed is not None else (pcie.cur_speed if pcie else None),
                cur_width=r.cur_width if r.cur_width is not None else (pcie.cur_width if pcie else None),
                acs=info.acs if info else None,
                acs_known=_acs_known(info, r),
                config_size=info.size if info else 0,
                parent=parents[bdf],
                physfn=r.physfn if r.physfn in by_bdf else None,
                host_bridge=r.host_bridge,
                bars=bars,
                iommu_group=r.iommu_group,
                numa_node=r.numa_node,
                driver=r.driver,
                vendor_name=vname,
                device_name=dname,
                class_name=cname,
                os_names=r.os_names,
                local_cpulist=r.local_cpulist,
                p2pmem=r.p2pmem,
            )
        )

    # Host bridges and pci_host_bridge_dev(): first device on the root bus in scan order
    # (devfn ascending, VFs last since pci_iov_add_virtfn() appends them).
    hb_names = list(dict.fromkeys([*host_bridges, *(r.host_bridge for r in by_bdf.values())]))
    hbs = []
    dev_by_bdf = {d.bdf: d for d in devices}
    for hb in sorted(hb_names, key=_hb_key):
        m = HOST_BRIDGE_RE.match(hb)
        dom = int(m["dom"], 16) if m else 0
        busno = int(m["bus"], 16) if m else 0
        roots = sorted(
            (r for r in by_bdf.values() if r.host_bridge == hb and parents[r.bdf] is None),
            key=_devfn_key,
        )
        # Only functions on the root bus itself count (not VFs whose PF is elsewhere).
        root_bus = [r.bdf for r in roots if parse_bdf(r.bdf)[1] == busno] or [r.bdf for r in roots]
        host_dev = None
        if root_bus:
            first = dev_by_bdf[root_bus[0]]
            if first.devfn == 0 or first.port_type == cfg.PCI_EXP_TYPE_ROOT_PORT:
                host_dev = first.bdf
        hbs.append(
            HostBridge(
                name=hb,
                domain=dom,
                bus=busno,
                root_devices=tuple(root_bus),
                host_dev=host_dev,
                proximity_domain=(proximity or {}).get(hb),
            )
        )
    return Topology(
        name=name,
        devices=tuple(devices),
        host_bridges=tuple(hbs),
        cpu=cpu,
        hmat=tuple(hmat),
        kernel_release=kernel_release,
        warnings=tuple(warn),
        source=source,
    )


def _hb_key(name: str) -> tuple[int, int, str]:
    m = HOST_BRIDGE_RE.match(name)
    if not m:
        return (1 << 40, 0, name)
    return (int(m["dom"], 16), int(m["bus"], 16), name)
