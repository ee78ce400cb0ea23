"""Vendor, device and class names from a ``pci.ids`` file when one is present, with a small built-in
table of common vendors and base classes so that output stays readable on machines without one."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

PCI_IDS_PATHS = ("usr/share/hwdata/pci.ids", "usr/share/misc/pci.ids", "usr/share/pci.ids")

BUILTIN_VENDORS = {
    0x1000: "Broadcom / LSI",
    0x1002: "AMD/ATI",
    0x1022: "AMD",
    0x10B5: "Broadcom / PLX",
    0x10DE: "NVIDIA",
    0x111D: "Renesas (IDT)",
    0x11F8: "Microchip (PMC-Sierra)",
    0x144D: "Samsung",
    0x14E4: "Broadcom",
    0x15B3: "Mellanox",
    0x1AE0: "Google",
    0x1AF4: "Red Hat (virtio)",
    0x1B36: "Red Hat (QEMU)",
    0x1D0F: "Amazon",
    0x8086: "Intel",
}

BUILTIN_CLASSES = {
    0x00: "Unclassified",
    0x01: "Mass storage controller",
    0x02: "Network controller",
    0x03: "Display controller",
    0x04: "Multimedia controller",
    0x05: "Memory controller",
    0x06: "Bridge",
    0x07: "Communication controller",
    0x08: "System peripheral",
    0x0B: "Processor",
    0x0C: "Serial bus controller",
    0x0D: "Wireless controller",
    0x11: "Signal processing controller",
    0x12: "Processing accelerators",
    0x13: "Non-Essential Instrumentation",
}

BUILTIN_SUBCLASSES = {
    0x0108: "Non-Volatile memory controller",
    0x0200: "Ethernet controller",
    0x0207: "Infiniband controller",
    0x0300: "VGA compatible controller",
    0x0302: "3D controller",
    0x0600: "Host bridge",
    0x0604: "PCI bridge",
    0x0880: "System peripheral",
    0x1200: "Processing accelerators",
}


@dataclass(slots=True)
class PciIds:
    """Parsed ``pci.ids``: vendor names, device names and class names."""

    vendors: dict[int, str] = field(default_factory=dict)
    devices: dict[tuple[int, int], str] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)
    source: str | None = None

    def names(self, vendor: int, device: int) -> tuple[str | None, str | None]:
        """(vendor name, device name), each None when unknown."""
        v = self.vendors.get(vendor) or BUILTIN_VENDORS.get(vendor)
        return v, self.devices.get((vendor, device))

    def class_name(self, class_code: int) -> str | None:
        """Most specific known name for a 24-bit class code."""
        sub = class_code >> 8
        return (
            self.classes.get(sub)
            or BUILTIN_SUBCLASSES.get(sub)
            or self.classes.get(class_code >> 16)
            or BUILTIN_CLASSES.get(class_code >> 16)
        )

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> PciIds:
        """Parse the pci.ids text format (vendors, tab-indented devices, ``C`` class sections)."""
        ids = cls(source=source)
        vendor: int | None = None
        klass: int | None = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("C "):
                    klass = int(line[2:4], 16)
                    vendor = None
                    ids.classes[klass] = line[4:].strip()
                elif line.startswith("\t\t"):
                    continue  # subsystem / prog-if lines
                elif line.startswith("\t"):
                    code, _, name = line[1:].partition(" ")
                    if vendor is not None:
                        ids.devices[(vendor, int(code, 16))] = name.strip()
                    elif klass is not None:
                        ids.classes[(klass << 8) | int(code, 16)] = name.strip()
                else:
                    code, _, name = line.partition(" ")
                    vendor = int(code, 16)
                    klass = None
                    ids.vendors[vendor] = name.strip()
            except ValueError:
                continue
        return ids

    @classmethod
    def find(cls, root: Path | None = None) -> PciIds:
        """Load pci.ids from ``root`` (a captured machine) or this machine; built-ins when absent."""
        bases = [root] if root is not None else []
        bases.append(Path("/"))
        for base in bases:
            for rel in PCI_IDS_PATHS:
                p = base / rel
                try:
                    if p.is_file() and not p.is_symlink():
                        return _parse_file(str(p))
                except OSError:
                    continue
        return cls()


@functools.lru_cache(maxsize=4)
def _parse_file(path: str) -> PciIds:
    """Parse a pci.ids file once per process (it is large and read-only)."""
    return PciIds.parse(Path(path).read_text(errors="replace"), path)
