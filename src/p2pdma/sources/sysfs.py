"""Read a machine's PCI tree from a sysfs/procfs root (``/`` live, a captured copy, or an archive held in
memory), and write one.

Every read goes through one ``sources.fs`` view, read-only, resolving each link as if the root were
``/`` (chroot-like), so a link can never lead outside the root. The hierarchy comes from
``sys/devices/pci*`` (what the kernel has); ``sys/bus/pci/devices`` only confirms it. Missing or
malformed files become one-line warnings naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from p2pdma.errors import SourceError
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import (
    BDF_RE,
    HOST_BRIDGE_RE,
    Cpu,
    HmatPath,
    P2pmem,
    RawFunction,
    Topology,
    build_topology,
)
from p2pdma.sources.fs import MAX_LINK_HOPS, FsView, LinkEscape, LiveFs, NotRegular, view

PCI_DEVICES = "sys/bus/pci/devices"
SYS_DEVICES = "sys/devices"
IOMMU_CLASS = "sys/class/iommu"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
DMI_ID = "sys/class/dmi/id"
# DMI strings anyone may read (the serials, UUID and asset tags are root-only and never captured)
DMI_FIELDS = (
    "sys_vendor", "product_name", "product_version", "product_family", "board_vendor", "board_name",
    "board_version", "bios_vendor", "bios_version", "bios_date", "chassis_vendor", "chassis_type",
)
# Subdirectories of a PCI function whose entries are the OS's names for it
OS_NAME_DIRS = ("net", "infiniband", "nvme", "drm")
_DRM_NAME = re.compile(r"^(card|renderD)[0-9]+$")
_NVME_NS = re.compile(r"^nvme[0-9]+(c[0-9]+)?n[0-9]+$")
MAX_FILE = 1 << 20
__all__ = ["LinkEscape", "MAX_LINK_HOPS", "read_root", "resolve_in_root", "write_root"]

_Escape = LinkEscape


def resolve_in_root(root: Path, rel: str) -> PurePosixPath:
    """Resolve ``rel`` inside the directory ``root`` following links chroot-style; returns a
    root-relative path. Absolute link targets restart at the root; a link climbing above the root
    or a loop raises LinkEscape."""
    real = LiveFs(str(root)).resolve(rel)
    return PurePosixPath(real) if real else PurePosixPath(".")


class SysfsReader:
    """Reads one root through its view; collects warnings for per-file trouble (absent, unreadable), and
    refuses a root where a file is a FIFO, device or socket."""

    def __init__(self, fs: FsView) -> None:
        self.fs = fs
        self.warnings: list[str] = []

    def read_raw(self, rel: str, limit: int = MAX_FILE, *, required: bool = False) -> bytes | None:
        try:
            return self.fs.read(rel, limit)
        except (OSError, LinkEscape) as exc:
            self._trouble(rel, exc, required)
        return None

    def _trouble(self, rel: str, exc: OSError | LinkEscape, required: bool) -> None:
        """The warning for a failed read of ``rel`` (absent: only when ``required``); SourceError for a
        FIFO, device or socket where the kernel's sysfs/procfs has a regular file: not a real root
        (reading it could block or never end), so the whole input is refused in one line."""
        if isinstance(exc, LinkEscape):
            self.warnings.append(f"{rel}: link leads outside the root, not followed")
        elif isinstance(exc, FileNotFoundError):
            if required:
                self.warnings.append(f"{rel}: missing")
        elif isinstance(exc, NotRegular):
            raise SourceError(f"{rel}: not a regular file where sysfs has one (a FIFO, device or socket): "
                              "refused") from None
        else:
            self.warnings.append(f"{rel}: unreadable ({exc.strerror or exc})")

    def read_text(self, rel: str, *, required: bool = False) -> str | None:
        data = self.read_raw(rel, required=required)
        return None if data is None else data.decode("utf-8", errors="replace")

    def _bytes_in(self, base: str, present: set[str] | None, name: str) -> bytes | None:
        """The bytes of ``base/name`` (not required); None at once when the directory's listing
        ``present`` lacks ``name`` (what the read would find: absent, no warning)."""
        if present is not None and name not in present:
            return None
        rel = f"{base}/{name}"
        try:
            return self.fs.read(rel, MAX_FILE)
        except (OSError, LinkEscape) as exc:
            self._trouble(rel, exc, False)
            return None

    def text_in(self, base: str, present: set[str] | None, name: str) -> str | None:
        """read_text() of ``base/name``, skipping a name ``present`` lacks (_bytes_in())."""
        data = self._bytes_in(base, present, name)
        return None if data is None else data.decode("utf-8", errors="replace")

    def int_in(self, base: str, present: set[str] | None, name: str, num_base: int = 10) -> int | None:
        """read_int() of ``base/name``, skipping a name ``present`` lacks as text_in() does."""
        data = self._bytes_in(base, present, name)
        if data is None:
            return None
        try:
            return int(data, num_base)  # ASCII digits and whitespace: what the text would parse as
        except ValueError:
            pass
        return self._number(f"{base}/{name}", data.decode("utf-8", errors="replace"), num_base)

    def _number(self, rel: str, text: str, num_base: int) -> int | None:
        try:
            return int(text.strip(), num_base)
        except ValueError:
            self.warnings.append(f"{rel}: not a number: {text.strip()[:40]!r}")
            return None

    def read_bytes(self, rel: str) -> bytes | None:
        return self.read_raw(rel, 4096, required=True)

    def link_name(self, rel: str) -> str | None:
        """Basename of a link's target (``driver``, ``iommu_group``, ``physfn``), without following it."""
        return self.fs.link_name(rel)

    def read_int(self, rel: str, base: int = 10) -> int | None:
        data = self.read_raw(rel)
        if data is None:
            return None
        return self._number(rel, data.decode("utf-8", errors="replace"), base)


def _speed(text: str | None) -> float | None:
    if not text:
        return None
    head = text.strip().split(" ")[0]
    try:
        return float(head)
    except ValueError:
        return None


def _width(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text.strip().lstrip("x"))
    except ValueError:
        return None


def parse_cpuinfo(text: str | None) -> Cpu | None:
    """The first processor's vendor, family, model and the hypervisor flag from /proc/cpuinfo."""
    if not text:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, val = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), val.strip())
    vendor = fields.get("vendor_id", "")
    try:
        family = int(fields.get("cpu family", "0"))
        model = int(fields.get("model", "0"))
    except ValueError:
        family = model = 0
    flags = fields.get("flags", "").split()
    if not vendor and not fields:
        return None
    return Cpu(
        vendor=vendor,
        family=family,
        model=model,
        model_name=fields.get("model name", ""),
        hypervisor="hypervisor" in flags,
    )


def _listdir(fs: FsView, rel: str) -> list[str] | None:
    try:
        return fs.listdir(rel)
    except (OSError, LinkEscape):
        return None


def walk_functions(fs: FsView) -> dict[str, tuple[str, list[str] | None]]:
    """Every PCI function directory below ``sys/devices/pci*`` (real directories named by BDF, links
    not followed): {root-relative directory: (host bridge, its entries or None if unlistable)}, in
    walk order."""
    out: dict[str, tuple[str, list[str] | None]] = {}
    try:
        top = fs.resolve_dir(SYS_DEVICES)
    except LinkEscape:
        return out
    for hb in _listdir(fs, top) or []:
        if not HOST_BRIDGE_RE.match(hb) or fs.kind(f"{top}/{hb}") != "d":
            continue
        start = f"{top}/{hb}"
        stack = [(start, hb)]
        while stack:
            cur, bridge = stack.pop()
            listing = _listdir(fs, cur)
            entries = listing or []
            if cur != start and BDF_RE.match(cur.rpartition("/")[2]):
                out[cur] = (bridge, listing)
            # both patterns need a colon: most entries (config, vendor, ...) are passed over at once
            kids = [(f"{cur}/{e}", e if HOST_BRIDGE_RE.match(e) else bridge)
                    for e in entries if ":" in e and (BDF_RE.match(e) or (cur != start and HOST_BRIDGE_RE.match(e)))]
            stack.extend(k for k in reversed(kids) if fs.kind(k[0]) == "d")
    return out


def _os_names(r: SysfsReader, base: str, present: set[str]) -> tuple[str, ...]:
    names: list[str] = []
    for sub in OS_NAME_DIRS:
        if sub not in present:
            continue
        for name in _listdir(r.fs, f"{base}/{sub}") or []:
            if sub == "drm" and not _DRM_NAME.match(name):
                continue
            names.append(name)
            if sub == "nvme":
                names.extend(n for n in _listdir(r.fs, f"{base}/{sub}/{name}") or [] if _NVME_NS.match(n))
    return tuple(names)


def _p2pmem(r: SysfsReader, base: str) -> P2pmem:
    def num(name: str) -> int | None:
        return r.int_in(base, None, f"p2pmem/{name}")

    published = num("published")
    return P2pmem(size=num("size"), available=num("available"),
                  published=None if published is None else bool(published))


@dataclasses.dataclass(frozen=True)
class Platform:
    """Machine-wide facts besides PCI, as read_platform() finds them."""

    dmi: tuple[tuple[str, str], ...]
    iommu_units: tuple[str, ...] | None
    iommu_group_types: tuple[tuple[int, str], ...]


def read_platform(fs: FsView, r: SysfsReader | None = None) -> Platform:
    """The machine-wide facts besides PCI: DMI strings, IOMMU units (None when the root does not
    say) and the IOMMU groups' default domain types."""
    rr = r or SysfsReader(fs)
    dmi: list[tuple[str, str]] = []
    if _listdir(fs, DMI_ID) is not None:
        for f in DMI_FIELDS:
            text = rr.read_text(f"{DMI_ID}/{f}")
            if text is not None and text.strip():
                dmi.append((f, text.strip()[:200]))
    units = _listdir(fs, IOMMU_CLASS)
    types: list[tuple[int, str]] = []
    for g in _listdir(fs, IOMMU_GROUPS) or []:
        if g.isdigit() and len(g) < 10:
            text = rr.read_text(f"{IOMMU_GROUPS}/{g}/type")
            if text is not None and text.strip():
                types.append((int(g), text.strip()[:40]))
    types.sort()
    return Platform(tuple(dmi), None if units is None else tuple(units), tuple(types))


def read_root(
    root: Path | str | FsView = "/", *, name: str | None = None, config_sizes: Mapping[str, int] | None = None
) -> Topology:
    """Read the PCI tree under ``root`` (a directory, or an FsView such as an archive in memory) into a
    Topology: ``sys/devices/pci*``, ``sys/bus/pci/devices``, ``proc/cpuinfo``, the kernel release,
    DMI, IOMMU units and group types.

    Raises SourceError when the root has no PCI devices at all; everything smaller is a warning in
    ``Topology.warnings``. ``config_sizes`` gives the kernel's cfg_size per BDF for a captured root
    (a capture's manifest); the live root ``/`` reads them from the ``config`` files' sizes.
    """
    if isinstance(root, FsView):
        fs = root
    else:
        path = os.fspath(root)
        if not os.path.isdir(path):
            raise SourceError(f"{path}: not a directory")
        fs = view(path)
    r = SysfsReader(fs)
    walked = walk_functions(fs)
    listed = _listdir(fs, PCI_DEVICES)
    if listed is None and not walked:
        where = f"{fs.label}/{PCI_DEVICES}" if fs.label not in ("", "/") else f"/{PCI_DEVICES}"
        raise SourceError(f"{where}: cannot list PCI devices (no such directory)")
    if listed is None:
        r.warnings.append(f"{PCI_DEVICES}: missing; functions read from {SYS_DEVICES}/pci*")
    found: dict[str, tuple[str, str, list[str] | None]] = {}  # bdf -> (dir, host bridge, entries or None)
    for d, (hb, walked_entries) in walked.items():
        bdf = d.rpartition("/")[2]
        if bdf in found:
            r.warnings.append(f"{d}: a second directory for {bdf}, skipped")
            continue
        found[bdf] = (d, hb, walked_entries)
    confirmed: set[str] = set()
    for entry in listed or []:
        rel = f"{PCI_DEVICES}/{entry}"
        if not BDF_RE.match(entry):
            r.warnings.append(f"{rel}: not a PCI address, skipped")
            continue
        try:
            real = fs.resolve(rel)
        except LinkEscape:
            r.warnings.append(f"{rel}: link leads outside the root, skipped")
            continue
        if entry in found and found[entry][0] == real:
            confirmed.add(entry)
            continue
        if fs.kind(real) != "d":
            r.warnings.append(f"{rel}: does not lead to a device directory, skipped")
            continue
        parts = real.split("/")
        hb_idx = max((i for i, p in enumerate(parts) if HOST_BRIDGE_RE.match(p)), default=None)
        if hb_idx is None:
            r.warnings.append(f"{rel}: not below a pciDDDD:BB host bridge directory, skipped")
            continue
        if entry in found:
            r.warnings.append(f"{rel}: leads to {real}, not to {found[entry][0]}; using the link")
        found[entry] = (real, parts[hb_idx], _listdir(fs, real))
        confirmed.add(entry)
    if listed is not None:
        missing = sorted(b for b in found if b not in confirmed)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            r.warnings.append(
                f"{', '.join(missing[:3])}{more}: in {SYS_DEVICES} but not in {PCI_DEVICES}; read from"
                f" {SYS_DEVICES} (the kernel's hierarchy)"
            )

    raws: list[RawFunction] = []
    host_bridges: list[str] = []
    for entry in sorted(found):
        base, host_bridge, listing = found[entry]
        # a name the listing lacks is absent (the read would say so); unlistable: every file is tried
        entries_set = set(listing or ())
        present = entries_set if listing is not None else None
        parts = base.split("/")
        hb_idx = len(parts) - 1 - parts[::-1].index(host_bridge)  # its last occurrence
        host_bridges.append(host_bridge)
        parent = parts[-2] if len(parts) - 2 > hb_idx and BDF_RE.match(parts[-2]) else None
        physfn = None
        if "physfn" in entries_set and fs.is_link(f"{base}/physfn"):
            try:
                pf_name = fs.resolve(f"{base}/physfn").rpartition("/")[2]
                physfn = pf_name if BDF_RE.match(pf_name) else None
            except LinkEscape:
                r.warnings.append(f"{base}/physfn: link leads outside the root, not followed")
        group = r.link_name(f"{base}/iommu_group") if "iommu_group" in entries_set else None
        cfg_size = None
        if config_sizes is not None:
            cfg_size = config_sizes.get(entry)
        elif fs.live:
            cfg_size = fs.file_size(f"{base}/config")
        cpulist = r.read_text(f"{base}/local_cpulist") if "local_cpulist" in entries_set else None
        raws.append(
            RawFunction(
                bdf=entry,
                host_bridge=host_bridge,
                parent_bdf=parent,
                physfn=physfn,
                config=r.read_bytes(f"{base}/config"),
                config_space_size=cfg_size,
                vendor=r.int_in(base, present, "vendor", 16),
                device=r.int_in(base, present, "device", 16),
                class_code=r.int_in(base, present, "class", 16),
                resource=r.text_in(base, present, "resource"),
                iommu_group=int(group) if group and group.isdigit() else None,
                numa_node=r.int_in(base, present, "numa_node"),
                driver=r.link_name(f"{base}/driver") if "driver" in entries_set else None,
                max_speed=_speed(r.text_in(base, present, "max_link_speed")),
                max_width=_width(r.text_in(base, present, "max_link_width")),
                cur_speed=_speed(r.text_in(base, present, "current_link_speed")),
                cur_width=_width(r.text_in(base, present, "current_link_width")),
                os_names=_os_names(r, base, entries_set),
                local_cpulist=cpulist.strip() or None if cpulist is not None else None,
                p2pmem=_p2pmem(r, base) if "p2pmem" in entries_set else None,
            )
        )
    cpu = parse_cpuinfo(r.read_text("proc/cpuinfo", required=True))
    release = r.read_text("proc/sys/kernel/osrelease")
    plat = read_platform(fs, r)
    label = fs.label or "/"
    ids_root = Path(fs.label) if isinstance(fs, LiveFs) and not fs.live else None
    topo = build_topology(
        raws,
        name=name or ("live" if fs.live else os.path.basename(label.rstrip("/")) or label),
        host_bridges=host_bridges,
        cpu=cpu,
        kernel_release=release.strip() or None if release else None,
        warnings=r.warnings,
        source=f"sysfs:{label}",
        ids=PciIds.find(ids_root),
    )
    topo = dataclasses.replace(
        topo,
        dmi=plat.dmi,
        iommu_units=plat.iommu_units,
        iommu_group_types=plat.iommu_group_types,
    )
    unknown = [d.bdf for d in topo.devices if not d.acs_known]
    if unknown:
        note = (
            f"ACS unknown for {len(unknown)} of {len(topo.devices)} functions: config space past"
            " 64 bytes unreadable (run as root to read it)"
        )
        topo = dataclasses.replace(topo, warnings=(*topo.warnings, note))
    return topo


def _os_dir(os_name: str) -> str:
    """The subdirectory of a function that holds an OS name (by the kernel's naming)."""
    if os_name.startswith("nvme"):
        return "nvme"
    if _DRM_NAME.match(os_name):
        return "drm"
    if os_name.startswith(("mlx", "hfi", "qib", "bnxt_re", "irdma", "efa", "rxe", "siw", "ib")):
        return "infiniband"
    return "net"


def write_root(
    root: Path,
    raws: Sequence[RawFunction],
    *,
    cpu: Cpu | None = None,
    kernel_release: str | None = None,
    hmat: Sequence[HmatPath] = (),
) -> None:
    """Lay ``raws`` out under ``root`` exactly as a live kernel does (device dirs nested under
    their bridges, ``bus/pci/devices`` links, ``iommu_group`` and ``physfn`` links, cpuinfo)."""
    by_bdf = {x.bdf: x for x in raws}

    def dev_dir(bdf: str) -> PurePosixPath:
        x = by_bdf[bdf]
        if x.physfn and x.physfn in by_bdf:
            return dev_dir(x.physfn).parent / bdf
        if x.parent_bdf:
            return dev_dir(x.parent_bdf) / bdf
        return PurePosixPath("sys/devices") / x.host_bridge / bdf

    (root / PCI_DEVICES).mkdir(parents=True, exist_ok=True)
    for x in raws:
        rel = dev_dir(x.bdf)
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        if x.config is not None:
            (d / "config").write_bytes(x.config)
        if x.vendor is not None:
            (d / "vendor").write_text(f"{x.vendor:#06x}\n")
        if x.device is not None:
            (d / "device").write_text(f"{x.device:#06x}\n")
        if x.class_code is not None:
            (d / "class").write_text(f"{x.class_code:#08x}\n")
        if x.resource is not None:
            (d / "resource").write_text(x.resource)
        (d / "numa_node").write_text(f"{-1 if x.numa_node is None else x.numa_node}\n")
        for fname, speed, width in (
            ("max_link", x.max_speed, x.max_width),
            ("current_link", x.cur_speed, x.cur_width),
        ):
            if speed is not None:
                (d / f"{fname}_speed").write_text(f"{speed:.1f} GT/s PCIe\n")
            if width is not None:
                (d / f"{fname}_width").write_text(f"{width}\n")
        if x.local_cpulist is not None:
            (d / "local_cpulist").write_text(x.local_cpulist + "\n")
        for os_name in x.os_names:
            sub = _os_dir(os_name)
            (d / sub / os_name).mkdir(parents=True, exist_ok=True)
        if x.p2pmem is not None:
            (d / "p2pmem").mkdir(exist_ok=True)
            for attr, value in (("size", x.p2pmem.size), ("available", x.p2pmem.available),
                                ("published", None if x.p2pmem.published is None else int(x.p2pmem.published))):
                if value is not None:
                    (d / "p2pmem" / attr).write_text(f"{value}\n")
        up = "../" * (len(rel.parts) - 1)
        if x.iommu_group is not None:
            gdir = root / "sys/kernel/iommu_groups" / str(x.iommu_group) / "devices"
            gdir.mkdir(parents=True, exist_ok=True)
            os.symlink(f"{up}kernel/iommu_groups/{x.iommu_group}", d / "iommu_group")
            os.symlink(f"../../../../{rel.relative_to('sys')}", gdir / x.bdf)
        if x.driver:
            os.symlink(f"{up}bus/pci/drivers/{x.driver}", d / "driver")
        if x.physfn and x.physfn in by_bdf:
            os.symlink(f"../{x.physfn}", d / "physfn")
        os.symlink(f"../../../{rel.relative_to('sys')}", root / PCI_DEVICES / x.bdf)
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    if cpu is not None:
        flags = "fpu vme de pse tsc msr" + (" hypervisor" if cpu.hypervisor else "")
        (root / "proc/cpuinfo").write_text(
            f"processor\t: 0\nvendor_id\t: {cpu.vendor}\ncpu family\t: {cpu.family}\n"
            f"model\t\t: {cpu.model}\nmodel name\t: {cpu.model_name}\nflags\t\t: {flags}\n\n"
        )
    if kernel_release:
        (root / "proc/sys/kernel/osrelease").write_text(kernel_release + "\n")
