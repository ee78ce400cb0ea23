"""Read a machine's PCI tree from a sysfs/procfs root (``/`` live, or a captured copy), and write one.

Reading is read-only and resolves every link as if the root were ``/`` (chroot-like), so a link can
never lead outside the root. Missing or malformed files become one-line warnings naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from p2pdma.errors import SourceError
from p2pdma.pci.ids import PciIds
from p2pdma.pci.topology import (
    BDF_RE,
    HOST_BRIDGE_RE,
    Cpu,
    HmatPath,
    RawFunction,
    Topology,
    build_topology,
)

PCI_DEVICES = "sys/bus/pci/devices"
MAX_LINK_HOPS = 40
MAX_FILE = 1 << 20


class LinkEscape(Exception):
    """A link resolved to a place outside the root."""


_Escape = LinkEscape


def resolve_in_root(root: Path, rel: str) -> PurePosixPath:
    """Resolve ``rel`` inside ``root`` following links chroot-style; returns a root-relative path.

    ``..`` at the top of the root and absolute link targets stay inside the root, except that a
    relative link climbing above the root is refused (raises _Escape): a capture never leads out.
    """
    parts = [p for p in PurePosixPath(rel).parts if p not in ("/", "")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if not done:
                raise _Escape(rel)
            done.pop()
            continue
        cand = root.joinpath(*done, part)
        try:
            st = os.lstat(cand)
        except OSError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise _Escape(rel)
            target = os.readlink(cand)
            tparts = [p for p in PurePosixPath(target).parts if p != "/"]
            if target.startswith("/"):
                done = []
            parts = tparts + parts
            continue
        done.append(part)
    return PurePosixPath(*done) if done else PurePosixPath(".")


class SysfsReader:
    """Reads one root; collects warnings instead of raising for per-file trouble."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.warnings: list[str] = []

    def _path(self, rel: PurePosixPath | str) -> Path:
        return self.root / rel

    def read_text(self, rel: PurePosixPath | str, *, required: bool = False) -> str | None:
        try:
            real = resolve_in_root(self.root, str(rel))
        except _Escape:
            self.warnings.append(f"{rel}: link leads outside the root, not followed")
            return None
        p = self._path(real)
        try:
            with open(p, "rb") as f:
                data = f.read(MAX_FILE)
        except FileNotFoundError:
            if required:
                self.warnings.append(f"{rel}: missing")
            return None
        except OSError as exc:
            self.warnings.append(f"{rel}: unreadable ({exc.strerror or exc})")
            return None
        return data.decode("utf-8", errors="replace")

    def read_bytes(self, rel: PurePosixPath | str) -> bytes | None:
        try:
            real = resolve_in_root(self.root, str(rel))
        except _Escape:
            self.warnings.append(f"{rel}: link leads outside the root, not followed")
            return None
        try:
            with open(self._path(real), "rb") as f:
                return f.read(4096)
        except FileNotFoundError:
            self.warnings.append(f"{rel}: missing")
        except OSError as exc:
            self.warnings.append(f"{rel}: unreadable ({exc.strerror or exc})")
        return None

    def link_name(self, rel: PurePosixPath | str) -> str | None:
        """Basename of a link's target (``driver``, ``iommu_group``, ``physfn``), without following it."""
        p = self._path(rel)
        try:
            return PurePosixPath(os.readlink(p)).name
        except OSError:
            return None

    def read_int(self, rel: PurePosixPath | str, base: int = 10) -> int | None:
        text = self.read_text(rel)
        if text is None:
            return None
        try:
            return int(text.strip(), base)
        except ValueError:
            self.warnings.append(f"{rel}: not a number: {text.strip()[:40]!r}")
            return None


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


def read_root(
    root: Path | str = "/", *, name: str | None = None, config_sizes: Mapping[str, int] | None = None
) -> Topology:
    """Read the PCI tree under ``root`` (``sys/bus/pci/devices``, ``proc/cpuinfo``) into a Topology.

    Raises SourceError when the root has no PCI devices directory at all; everything smaller is a
    warning in ``Topology.warnings``. ``config_sizes`` gives the kernel's cfg_size per BDF for a
    captured root (a capture's manifest); the live root ``/`` reads them from the ``config`` files.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    r = SysfsReader(root)
    devdir = root / PCI_DEVICES
    try:
        real_devdir = resolve_in_root(root, PCI_DEVICES)
        entries = sorted(os.listdir(root / real_devdir))
    except (_Escape, OSError) as exc:
        raise SourceError(f"{devdir}: cannot list PCI devices ({exc})") from None

    raws: list[RawFunction] = []
    host_bridges: list[str] = []
    for entry in entries:
        if not BDF_RE.match(entry):
            r.warnings.append(f"{PCI_DEVICES}/{entry}: not a PCI address, skipped")
            continue
        rel = f"{PCI_DEVICES}/{entry}"
        try:
            real = resolve_in_root(root, rel)
        except _Escape:
            r.warnings.append(f"{rel}: link leads outside the root, skipped")
            continue
        if not (root / real).is_dir():
            r.warnings.append(f"{rel}: does not lead to a device directory, skipped")
            continue
        parts = real.parts
        hb_idx = max((i for i, p in enumerate(parts) if HOST_BRIDGE_RE.match(p)), default=None)
        if hb_idx is None:
            r.warnings.append(f"{rel}: not below a pciDDDD:BB host bridge directory, skipped")
            continue
        host_bridge = parts[hb_idx]
        host_bridges.append(host_bridge)
        parent = parts[-2] if len(parts) - 2 > hb_idx and BDF_RE.match(parts[-2]) else None
        base = PurePosixPath(real)
        physfn = None
        if os.path.islink(root / base / "physfn"):
            try:
                pf_real = resolve_in_root(root, str(base / "physfn"))
                physfn = pf_real.name if BDF_RE.match(pf_real.name) else None
            except _Escape:
                r.warnings.append(f"{base}/physfn: link leads outside the root, not followed")
        group = r.link_name(base / "iommu_group")
        cfg_size = None
        if config_sizes is not None:
            cfg_size = config_sizes.get(entry)
        elif str(root) == "/":
            try:
                cfg_size = os.stat(root / base / "config").st_size
            except OSError:
                cfg_size = None
        raws.append(
            RawFunction(
                bdf=entry,
                host_bridge=host_bridge,
                parent_bdf=parent,
                physfn=physfn,
                config=r.read_bytes(base / "config"),
                config_space_size=cfg_size,
                vendor=r.read_int(base / "vendor", 16),
                device=r.read_int(base / "device", 16),
                class_code=r.read_int(base / "class", 16),
                resource=r.read_text(base / "resource"),
                iommu_group=int(group) if group and group.isdigit() else None,
                numa_node=r.read_int(base / "numa_node"),
                driver=r.link_name(base / "driver"),
                max_speed=_speed(r.read_text(base / "max_link_speed")),
                max_width=_width(r.read_text(base / "max_link_width")),
                cur_speed=_speed(r.read_text(base / "current_link_speed")),
                cur_width=_width(r.read_text(base / "current_link_width")),
            )
        )
    cpu = parse_cpuinfo(r.read_text("proc/cpuinfo", required=True))
    release = r.read_text("proc/sys/kernel/osrelease")
    topo = build_topology(
        raws,
        name=name or ("live" if str(root) == "/" else root.name),
        host_bridges=host_bridges,
        cpu=cpu,
        kernel_release=release.strip() if release else None,
        warnings=r.warnings,
        source=f"sysfs:{root}",
        ids=PciIds.find(root if str(root) != "/" else None),
    )
    unknown = [d.bdf for d in topo.devices if not d.acs_known]
    if unknown:
        note = (
            f"ACS unknown for {len(unknown)} of {len(topo.devices)} functions: config space past"
            " 64 bytes unreadable (run as root to read it)"
        )
        topo = dataclasses.replace(topo, warnings=(*topo.warnings, note))
    return topo


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
