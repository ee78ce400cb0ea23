"""Vendor, device and class names from a ``pci.ids`` file when one is present, with a small built-in
table of common vendors and base classes so that output stays readable on machines without one."""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

PCI_IDS_PATHS = ("usr/share/hwdata/pci.ids", "usr/share/misc/pci.ids", "usr/share/pci.ids")
MAX_PCI_IDS = 64 << 20  # a real pci.ids is about 1.5 MB; a larger (or sparse 2 GB) one is ignored

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

    looked: set[int] = field(default_factory=set)  # vendors (and -1: classes) parsed from ``source``
    sections: dict[int, tuple[int, int]] = field(default_factory=dict)  # vendor -> its device lines' bytes

    def _load_vendor(self, vendor: int) -> None:
        """Parse only ``vendor``'s section of the file (lazily, once): the rest is never parsed."""
        self.looked.add(vendor)
        data = _file_bytes(self.source) if self.source else None
        if not data:
            return
        key = b"%04x " % vendor
        if data.startswith(key):
            start = 0
        else:
            i = data.find(b"\n" + key)
            if i < 0:
                return
            start = i + 1
        end = start
        while True:  # the vendor line, then its tab-indented device lines
            nl = data.find(b"\n", end)
            nl = len(data) if nl < 0 else nl
            end = nl + 1
            if end >= len(data) or data[end : end + 1] not in (b"\t", b"#"):
                break
        self._merge(PciIds.parse(data[start:end].decode("utf-8", "replace")))

    def _load_class_block(self, base: int) -> bool:
        """Parse only base class ``base``'s ``C`` block (its subclass lines), once; False when the file
        has no such block (the caller then parses the whole class section, as before)."""
        self.looked.add(-2 - base)
        data = _file_bytes(self.source) if self.source else None
        if not data:
            return True
        first = self.sections.get(-1)
        if first is None:
            at = data.find(b"\nC ")
            first = self.sections[-1] = (at, at)
        if first[0] < 0:
            return False
        i = data.find(b"\nC %02x  " % base, first[0])
        if i < 0:
            return False
        end = data.find(b"\nC ", i + 1)
        self._merge(PciIds.parse(data[i + 1 : end + 1 if end >= 0 else len(data)].decode("utf-8", "replace")))
        return True

    def _load_classes(self) -> None:
        self.looked.add(-1)
        data = _file_bytes(self.source) if self.source else None
        i = -1 if not data else data.find(b"\nC ")
        if data and i >= 0:
            self._merge(PciIds.parse(data[i + 1 :].decode("utf-8", "replace")))

    def _merge(self, other: PciIds) -> None:
        for k, v in other.vendors.items():
            self.vendors.setdefault(k, v)
        for kd, v in other.devices.items():
            self.devices.setdefault(kd, v)
        for k, v in other.classes.items():
            self.classes.setdefault(k, v)

    def names(self, vendor: int, device: int) -> tuple[str | None, str | None]:
        """(vendor name, device name), each None when unknown: the vendor's line and the one device
        line are found in the file's bytes, nothing else of it is parsed."""
        if self.source is not None and (vendor, device) not in self.devices and vendor not in self.looked:
            self._lookup(vendor, device)
        v = self.vendors.get(vendor) or BUILTIN_VENDORS.get(vendor)
        return v, self.devices.get((vendor, device))

    def _lookup(self, vendor: int, device: int) -> None:
        """Find ``vendor``'s section (its bounds cached) and ``device``'s line in it."""
        data = _file_bytes(self.source) if self.source else None
        if not data:
            self.looked.add(vendor)
            return
        bounds = self.sections.get(vendor)
        if bounds is None:
            key = b"%04x  " % vendor
            start = 0 if data.startswith(key) else data.find(b"\n" + key) + 1
            if start <= 0 and not data.startswith(key):
                self.looked.add(vendor)  # not in the file: built-ins only
                return
            nl = data.find(b"\n", start)
            nl = len(data) if nl < 0 else nl
            self.vendors.setdefault(vendor, data[start + 6 : nl].decode("utf-8", "replace").strip())
            nxt = _NEXT_TOP.search(data, nl)  # the next line that is neither indented nor a comment
            bounds = self.sections[vendor] = (nl, nxt.start() + 1 if nxt else len(data))
        i = data.find(b"\n\t%04x  " % device, bounds[0] - 1, bounds[1])
        if i >= 0:
            nl = data.find(b"\n", i + 1)
            nl = bounds[1] if nl < 0 else nl
            self.devices[(vendor, device)] = data[i + 8 : nl].decode("utf-8", "replace").strip()
        else:
            self.devices[(vendor, device)] = None  # type: ignore[assignment]

    def class_name(self, class_code: int) -> str | None:
        """Most specific known name for a 24-bit class code."""
        base = class_code >> 16
        if -1 not in self.looked and self.source is not None and -2 - base not in self.looked:
            # base class 0's subclass keys share numbers with base classes: that one reads the whole section
            if base == 0 or not self._load_class_block(base):
                self._load_classes()
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
        """pci.ids of ``root`` (a captured machine) or this machine, looked up lazily per vendor;
        built-ins when absent, not a regular file, or larger than MAX_PCI_IDS."""
        bases = [root] if root is not None else []
        bases.append(Path("/"))
        for base in bases:
            for rel in PCI_IDS_PATHS:
                p = str(base / rel)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= MAX_PCI_IDS:
                    return _shared(p, st.st_size, st.st_mtime_ns)
        return cls()


_NEXT_TOP = re.compile(rb"\n[^\t#\n]")


@functools.lru_cache(maxsize=8)
def _shared(path: str, size: int, mtime_ns: int) -> PciIds:
    """One PciIds per pci.ids file (and version of it) in a process: the vendor sections parsed for one
    machine are not parsed again for the next (a fleet worker reads thousands)."""
    return PciIds(source=path)


@functools.lru_cache(maxsize=4)
def _file_bytes(path: str) -> bytes:
    """The bytes of a pci.ids file, read once per process with a bound (a regular file only, opened
    without blocking); empty when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PCI_IDS:
            return b""
        parts, got = [], 0
        while got <= MAX_PCI_IDS:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts) if got <= MAX_PCI_IDS else b""
    except OSError:
        return b""
    finally:
        os.close(fd)
