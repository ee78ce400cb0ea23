"""Config space of the live machine read sparsely: only the header, the capability headers, the PCI
Express capability and the ACS capability that pci.config.decode() looks at.

Reading a 4 KiB ``config`` file as root makes the kernel do 1,024 config reads
(pci_read_config_dword() per dword in pci_read_config() of drivers/pci/pci-sysfs.c, Debian 6.1.176
and 7.2.13 alike); in a VM each one traps (about 3 ms a function measured here), more than everything
else ``p2pdma matrix`` does on a small machine. The bytes decode() never reads are left zero: decode()
of the sparse buffer equals decode() of the full read (tested on every captured and synthesized
config), and the buffer has the full read's length.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from p2pdma.pci import config as cfg
from p2pdma.sources.fs import MAX_READ, LiveFs

Pread = Callable[[int, int], bytes]  # (length, offset) -> bytes, short at the end of the file


def sparse_config(pread: Pread, size: int) -> bytes:
    """The config space decode() needs, laid out as the full read of ``size`` bytes would be.

    Reads the 64-byte header, the last dword (a short read there means an unprivileged reader, whom
    the kernel gives 64 bytes: then everything is read as a plain read would), then walks the
    capability list and the extended capability list exactly as decode() does (pci_find_capability()
    and pci_find_next_ext_capability() in drivers/pci/pci.c of Debian 6.1.176 and 7.2.13, with their
    bounds), reading each header, the PCI Express capability's first 0x14 bytes, and ACS's capability,
    control and egress vector.
    """
    if size < cfg.PCI_STD_HEADER_SIZEOF + 4:
        return _full(pread, size)
    buf = bytearray(size)

    def fill(off: int, length: int) -> bool:
        got = pread(length, off)
        buf[off : off + len(got)] = got
        return len(got) == length

    if not fill(0, cfg.PCI_STD_HEADER_SIZEOF) or not fill((size - 4) & ~3, 4):
        return _full(pread, size)
    if int.from_bytes(buf[cfg.PCI_STATUS : cfg.PCI_STATUS + 2], "little") & cfg.PCI_STATUS_CAP_LIST:
        pos = buf[cfg.PCI_CAPABILITY_LIST]
        ttl = 48  # PCI_FIND_CAP_TTL
        seen_exp = False
        while ttl and pos >= 0x40:
            pos &= ~3
            if pos + 2 > size:
                break
            if not fill(pos, 2):
                return _full(pread, size)
            if buf[pos] == 0xFF:
                break
            if buf[pos] == cfg.PCI_CAP_ID_EXP and not seen_exp and pos + 0x14 <= size:
                seen_exp = True
                if not fill(pos, 0x14):
                    return _full(pread, size)
            pos = buf[pos + 1]
            ttl -= 1
    if size < cfg.PCI_CFG_SPACE_EXP_SIZE:
        return bytes(buf)  # decode() walks no extended capability below 4 KiB
    pos = cfg.PCI_EXT_CAP_START
    ttl = (cfg.PCI_CFG_SPACE_EXP_SIZE - cfg.PCI_CFG_SPACE_SIZE) // 8
    seen_acs = False
    while ttl > 0 and pos >= cfg.PCI_EXT_CAP_START and pos + 4 <= size:
        if not fill(pos, 4):
            return _full(pread, size)
        header = int.from_bytes(buf[pos : pos + 4], "little")
        if header == 0 or header == 0xFFFFFFFF:
            break
        if header & 0xFFFF == cfg.PCI_EXT_CAP_ID_ACS and not seen_acs and pos + 8 <= size:
            seen_acs = True
            if not fill(pos + 4, 4):
                return _full(pread, size)
            acs_cap = int.from_bytes(buf[pos + cfg.PCI_ACS_CAP : pos + cfg.PCI_ACS_CAP + 2], "little")
            if acs_cap & cfg.PCI_ACS_EC:
                ndw = (cfg.egress_vector_bits(acs_cap) + 31) // 32
                start = pos + cfg.PCI_ACS_EGRESS_CTL_V
                length = max(0, min(4 * ndw, (size - start) // 4 * 4))
                if length and not fill(start, length):
                    return _full(pread, size)
        pos = (header >> 20) & 0xFFC
        ttl -= 1
    return bytes(buf)


def _full(pread: Pread, size: int) -> bytes:
    """Every byte up to ``size`` (what a plain read gives)."""
    chunks = []
    off = 0
    while off < size:
        got = pread(min(size - off, 1 << 16), off)
        if not got:
            break
        chunks.append(got)
        off += len(got)
    return b"".join(chunks)


class SparseConfigFs(LiveFs):
    """The live root ``/`` with each function's ``config`` read sparsely (sparse_config()); every other
    file is read as LiveFs reads it."""

    def read(self, rel: str, limit: int = MAX_READ) -> bytes:
        head, _, tail = rel.rpartition("/")
        if tail != "config" or not head.startswith("sys/"):
            return super().read(rel, limit)
        fd, st_size = self.open_regular(rel)
        try:
            def pread(length: int, off: int) -> bytes:
                return os.pread(fd, length, off)

            if st_size <= 0:  # a size the kernel does not say: read it all
                return _full(pread, limit)
            return sparse_config(pread, min(limit, st_size))
        finally:
            os.close(fd)


__all__ = ["SparseConfigFs", "sparse_config"]
