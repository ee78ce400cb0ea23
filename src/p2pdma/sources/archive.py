"""Capture archives (``p2pdma capture`` output, or any tar of a sysfs/procfs root such as
hwloc-gather-topology's) read in memory: decompressed with a cap, every tar header parsed and checked
before anything is used, members indexed once into an ``ArchiveFs``. Nothing is ever extracted.

Refused, with one line: absolute or ``..`` names, links leading out of the root (through chains of
the archive's own links), hard links, device files, FIFOs, sparse files, duplicates, members below a
non-directory, more than MAX_MEMBERS members, more than MAX_TOTAL_SIZE bytes of data, a stream
expanding past MAX_STREAM bytes or more than MAX_RATIO times its compressed size.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import lzma
import os
import stat
import zlib
from typing import IO, Any, cast

from p2pdma.errors import SourceError
from p2pdma.pci.topology import Topology
from p2pdma.sources.fs import ArchiveFs, LinkEscape, resolve, split

MANIFEST = "p2pdma-capture.json"
CAPTURE_SCHEMAS = ("p2pdma.capture/1", "p2pdma.capture/2")
HMAT = "sys/firmware/acpi/tables/HMAT"

MAX_MEMBERS = 65536
MAX_MEMBER_SIZE = 4 << 20
MAX_TOTAL_SIZE = 64 << 20
MAX_STREAM = MAX_TOTAL_SIZE + MAX_MEMBERS * 1536  # decompressed bytes, headers included
MAX_RATIO = 1000  # decompressed / compressed, checked once past RATIO_FLOOR bytes
RATIO_FLOOR = 1 << 20
MAX_ARCHIVE_SIZE = 256 << 20
MAX_NAME = 1024
MAX_DEPTH = 64
MAX_LINK_TARGET = 4095  # PATH_MAX - 1: no kernel link is longer
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

_ZERO = bytes(512)


class ArchiveError(Exception):
    """An archive is refused; the message is one line."""


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a capture archive by its suffix."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def machine_name(path: str | os.PathLike[str]) -> str:
    """A machine's name from its capture's file name (suffix dropped)."""
    base = os.path.basename(str(path))
    low = base.lower()
    for suffix in (*ARCHIVE_SUFFIXES, ".xml"):
        if low.endswith(suffix):
            return base[: -len(suffix)] or base
    return base


def _one_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines and lines[0] else type(exc).__name__


def decompress(raw: bytes) -> bytes:
    """The tar stream inside ``raw`` (gzip, bzip2, xz or none, by magic bytes), refusing to expand
    past MAX_STREAM bytes or MAX_RATIO times the input."""
    head = raw[:6]
    inner: IO[bytes]
    if head[:2] == b"\x1f\x8b":
        inner = cast(IO[bytes], gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb"))
    elif head[:3] == b"BZh":
        inner = bz2.BZ2File(io.BytesIO(raw), "rb")
    elif head == b"\xfd7zXZ\x00":
        inner = lzma.LZMAFile(io.BytesIO(raw), "rb")
    else:
        if len(raw) > MAX_STREAM:
            raise ArchiveError(f"archive expands past {MAX_STREAM} bytes")
        return raw
    limit = MAX_STREAM
    ratio_cap = max(RATIO_FLOOR, MAX_RATIO * len(raw))
    out = bytearray()
    try:
        with inner:
            while True:
                chunk = inner.read(1 << 20)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise ArchiveError(f"archive expands past {limit} bytes")
                if len(out) > ratio_cap:
                    raise ArchiveError(f"archive expands more than {MAX_RATIO} times its size")
    except ArchiveError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"not a readable tar archive ({_one_line(exc)})") from None
    return bytes(out)


def _clean_name(raw_name: str) -> str:
    """The member's normalised relative path; ArchiveError for absolute or ``..`` names."""
    shown = repr(raw_name[:80])
    if "\x00" in raw_name:
        raise ArchiveError(f"member {shown} has a NUL byte in its name")
    if raw_name.startswith("/"):
        raise ArchiveError(f"member {shown} is an absolute path")
    if len(raw_name) > MAX_NAME:
        raise ArchiveError(f"member {shown}... has a name longer than {MAX_NAME} characters")
    parts = split(raw_name)
    if ".." in parts:
        raise ArchiveError(f"member {shown} climbs out with '..'")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"member {shown} is nested deeper than {MAX_DEPTH} levels")
    return "/".join(parts)


def _octal(field: bytes, what: str) -> int:
    """A tar number field: octal text, or base-256 (high bit set) as GNU writes large values."""
    if field[:1] and field[0] & 0x80:
        if field[0] == 0xFF:
            raise ArchiveError(f"negative {what} in a tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"not a readable tar archive (bad {what} field)") from None


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header (``LEN key=value\\n``), parsed in one linear pass."""
    out: dict[str, str] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:
            break
        sp = data.find(b" ", pos, pos + 24)
        if sp < 0:
            raise ArchiveError("not a readable tar archive (bad pax header)")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise ArchiveError("not a readable tar archive (bad pax header)") from None
        end = pos + length
        if length <= sp - pos + 1 or end > n or data[end - 1] != 0x0A:
            raise ArchiveError("not a readable tar archive (bad pax header)")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq:
            raise ArchiveError("not a readable tar archive (bad pax record)")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


@dataclasses.dataclass(slots=True)
class Member:
    """One archive member after its pax/GNU headers are applied."""

    name: str
    type: bytes
    size: int
    linkname: str
    offset: int


def iter_members(buf: bytes) -> list[Member]:
    """Parse every tar header of ``buf`` (ustar, pax and GNU long names), checking checksums and
    bounds; refuses member kinds a capture never holds."""
    out: list[Member] = []
    pos = 0
    n = len(buf)
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    total = 0
    if n == 0:
        raise ArchiveError("not a readable tar archive (empty file)")
    while True:
        if pos + 512 > n:
            if pos == 0 or pax or long_name is not None or long_link is not None:
                raise ArchiveError("not a readable tar archive (unexpected end of data)")
            break
        hdr = buf[pos : pos + 512]
        if hdr == _ZERO:
            break
        stored = _octal(hdr[148:156], "checksum")
        unsigned = sum(hdr) - sum(hdr[148:156]) + 256
        if stored != unsigned:
            signed = unsigned - 2 * sum(b for b in hdr if b > 127) + 2 * sum(b for b in hdr[148:156] if b > 127)
            if stored != signed:
                raise ArchiveError("not a readable tar archive (bad header checksum)")
        kind = hdr[156:157]
        size = _octal(hdr[124:136], "size")
        data_at = pos + 512
        if kind in (b"x", b"g", b"L", b"K"):
            if size > MAX_MEMBER_SIZE:
                raise ArchiveError(f"a header declares more than {MAX_MEMBER_SIZE} bytes")
            if data_at + size > n:
                raise ArchiveError("not a readable tar archive (unexpected end of data)")
            data = buf[data_at : data_at + size]
            if kind == b"x":
                pax.update(_pax(data))
            elif kind == b"g":
                glob = _pax(data)
                if set(glob) & {"path", "linkpath", "size"} or any(k.startswith("GNU.sparse") for k in glob):
                    raise ArchiveError("a global pax header sets member names or sizes: not allowed")
            elif kind == b"L":
                long_name = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            else:
                long_link = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            pos = data_at + (size + 511) // 512 * 512
            continue
        name = _text(hdr[0:100])
        if hdr[257:263] == b"ustar\x00" and hdr[345:346] != b"\x00":
            name = _text(hdr[345:500]) + "/" + name
        if long_name is not None:
            name = long_name
        linkname = long_link if long_link is not None else _text(hdr[157:257])
        if "path" in pax:
            name = pax["path"]
        if "linkpath" in pax:
            linkname = pax["linkpath"]
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise ArchiveError("not a readable tar archive (bad pax size)") from None
        sparse = any(k.startswith("GNU.sparse") for k in pax)
        pax = {}
        long_name = long_link = None
        if kind == b"\x00" and name.endswith("/"):
            kind = b"5"
        shown = repr(name[:80])
        if kind in (b"0", b"\x00", b"7") and not sparse:
            if size > MAX_MEMBER_SIZE:
                raise ArchiveError(f"member {shown} declares {size} bytes (more than {MAX_MEMBER_SIZE})")
            total += size
            if total > MAX_TOTAL_SIZE:
                raise ArchiveError(f"members total more than {MAX_TOTAL_SIZE} bytes")
            if data_at + size > n:
                raise ArchiveError("not a readable tar archive (unexpected end of data)")
            kind = b"0"
        elif kind == b"S" or sparse:
            raise ArchiveError(f"member {shown} is a sparse file: not allowed")
        elif kind == b"2":
            size = 0
        elif kind == b"5":
            size = 0
        elif kind == b"1":
            raise ArchiveError(f"member {shown} is a hard link (to {linkname[:80]!r}): not allowed in a capture")
        elif kind in (b"3", b"4"):
            raise ArchiveError(f"member {shown} is a device file: not allowed")
        elif kind == b"6":
            raise ArchiveError(f"member {shown} is a FIFO: not allowed")
        else:
            raise ArchiveError(f"member {shown} has unsupported type {kind!r}")
        out.append(Member(name, kind, size, linkname, data_at))
        if len(out) > MAX_MEMBERS:
            raise ArchiveError(f"more than {MAX_MEMBERS} members")
        pos = data_at + (size + 511) // 512 * 512
    return out


def index_members(buf: bytes, members: list[Member], *, label: str = "") -> ArchiveFs:
    """Check the members as a whole (duplicates, parents, links) and index them in memory."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    kinds: dict[str, bytes] = {}
    for m in members:
        name = _clean_name(m.name)
        shown = repr(m.name[:80])
        if m.type == b"2":
            target = m.linkname
            if not target or "\x00" in target:
                raise ArchiveError(f"link {shown} has an empty or NUL target")
            if len(target) > MAX_LINK_TARGET:
                raise ArchiveError(f"link {shown} has a target longer than {MAX_LINK_TARGET} bytes")
            if target.startswith("/"):
                raise ArchiveError(f"link {shown} -> {target[:80]!r} leads outside the root (absolute)")
        if not name:
            if m.type == b"5":
                continue
            raise ArchiveError(f"member {shown} names the root itself")
        seen = kinds.get(name)
        if seen is not None and not (m.type == b"5" and seen == b"5"):
            raise ArchiveError(f"member {shown} appears twice")
        kinds[name] = m.type
        if m.type == b"0":
            files[name] = buf[m.offset : m.offset + m.size]
        elif m.type == b"2":
            links[name] = m.linkname
    dirs: dict[str, set[str]] = {"": set()}
    for name, kind in kinds.items():
        if kind == b"5":
            dirs.setdefault(name, set())
        child = name
        while True:
            parent, _, base = child.rpartition("/")
            entries = dirs.get(parent)
            if entries is not None:
                entries.add(base)
                break
            pk = kinds.get(parent)
            if pk is not None and pk != b"5":
                raise ArchiveError(f"member {name[:80]!r} lies below {parent[:80]!r}, which is not a directory")
            dirs[parent] = {base}
            child = parent
    resolved: dict[str, str] = {}
    for name in sorted(links):
        head = name.rpartition("/")[0]
        try:
            resolved[name] = resolve(links[name], links.get, split(head), resolved)
        except LinkEscape:
            raise ArchiveError(f"link {name[:80]!r} -> {links[name][:80]!r} leads outside the root") from None
    return ArchiveFs(files, links, {k: sorted(v) for k, v in dirs.items()}, label=label, resolved=resolved)


def _root_prefix(fs: ArchiveFs) -> str:
    """The tree's root inside the archive: the archive itself, or its single top folder
    (hwloc-gather-topology tarballs) when that holds ``sys``."""
    if fs.kind("sys") == "d":
        return ""
    tops = [e for e in fs.dirs.get("", []) if e != MANIFEST]
    if len(tops) == 1 and fs.kind(tops[0]) == "d" and fs.kind(f"{tops[0]}/sys") == "d":
        return tops[0]
    raise ArchiveError("no sys/ tree in the archive")


def _chroot(fs: ArchiveFs, prefix: str) -> ArchiveFs:
    """The view below ``prefix`` as its own root (links re-checked against that root)."""
    if not prefix:
        return fs
    pre = prefix + "/"
    cut = len(pre)
    files = {k[cut:]: v for k, v in fs.files.items() if k.startswith(pre)}
    links = {k[cut:]: v for k, v in fs.links.items() if k.startswith(pre)}
    dirs = {k[cut:]: v for k, v in fs.dirs.items() if k.startswith(pre)}
    dirs[""] = fs.dirs.get(prefix, [])
    resolved: dict[str, str] = {}
    for name in sorted(links):
        try:
            resolved[name] = resolve(links[name], links.get, split(name.rpartition("/")[0]), resolved)
        except LinkEscape:
            raise ArchiveError(f"link {(pre + name)[:80]!r} -> {links[name][:80]!r} leads outside the root") from None
    return ArchiveFs(files, links, dirs, label=fs.label, resolved=resolved)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The archive file's bytes: a regular file of at most MAX_ARCHIVE_SIZE bytes."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"{where}: {exc.strerror or exc}", exc.errno) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError("not a regular file")
        if st.st_size > MAX_ARCHIVE_SIZE:
            raise ArchiveError(f"archive is larger than {MAX_ARCHIVE_SIZE} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_ARCHIVE_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_ARCHIVE_SIZE:
        raise ArchiveError(f"archive is larger than {MAX_ARCHIVE_SIZE} bytes")
    return data


@dataclasses.dataclass(frozen=True, slots=True)
class OpenArchive:
    """A validated archive: the view of its sysfs/procfs root and its capture manifest, if any."""

    fs: ArchiveFs
    manifest: dict[str, Any] | None


def open_archive(path: str | os.PathLike[str], *, data: bytes | None = None) -> OpenArchive:
    """Read, check and index an archive in memory; SourceError ``PATH: refused: WHY`` (one line)."""
    where = os.fspath(path)
    try:
        if data is None:
            data = read_bytes(where)
        elif len(data) > MAX_ARCHIVE_SIZE:
            raise ArchiveError(f"archive is larger than {MAX_ARCHIVE_SIZE} bytes")
        buf = decompress(data)
        whole = index_members(buf, iter_members(buf), label=where)
        prefix = _root_prefix(whole)
        manifest = _read_manifest(whole, prefix)
        return OpenArchive(_chroot(whole, prefix), manifest)
    except ArchiveError as exc:
        raise SourceError(f"{where}: refused: {exc}") from None


def _read_manifest(fs: ArchiveFs, prefix: str) -> dict[str, Any] | None:
    for name in (MANIFEST, f"{prefix}/{MANIFEST}" if prefix else None):
        if name is None or name not in fs.files:
            continue
        try:
            doc = json.loads(fs.files[name].decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise ArchiveError(f"manifest {MANIFEST} is not JSON ({_one_line(exc)})") from None
        if not isinstance(doc, dict) or doc.get("schema") not in CAPTURE_SCHEMAS:
            raise ArchiveError(f"manifest {MANIFEST} is not a {CAPTURE_SCHEMAS[-1]} document")
        return doc
    return None


def manifest_notes(manifest: dict[str, Any]) -> list[str]:
    """The capture's own account of what it could not read, as topology warnings."""
    notes: list[str] = []
    who = f"capture of {str(manifest.get('hostname', '?'))[:80]} (uid {manifest.get('euid', '?')})"
    if manifest.get("schema") == CAPTURE_SCHEMAS[0]:
        notes.append(
            f"{who}: an old capture ({CAPTURE_SCHEMAS[0]}): IOMMU units and group types, DMI, local CPU lists,"
            " OS device names and p2pmem attributes were not recorded"
        )
    trunc = manifest.get("truncated") or []
    if isinstance(trunc, list) and trunc:
        notes.append(f"{who}: config space of {len(trunc)} functions was cut short when captured (not root)")
    unread = manifest.get("unreadable") or []
    if isinstance(unread, list):
        for u in unread[:8]:
            if isinstance(u, dict):
                notes.append(f"{who}: could not read {str(u.get('path'))[:120]} ({str(u.get('reason'))[:80]})")
        if len(unread) > 8:
            notes.append(f"{who}: ... and {len(unread) - 8} more unreadable files")
    return notes


def config_sizes(manifest: dict[str, Any] | None) -> dict[str, int] | None:
    """cfg_size per function, only from a live capture (a copied tree's file sizes say nothing)."""
    if not manifest or manifest.get("live") is not True:
        return None
    sizes = manifest.get("config_sizes")
    if not isinstance(sizes, dict):
        return None
    return {str(k): v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)}


def load_capture(
    path: str | os.PathLike[str],
    *,
    data: bytes | None = None,
    name: str | None = None,
    tmpdir: str | None = None,
) -> Topology:
    """Read a capture archive (or any tar of a sysfs/procfs root) into a Topology, in memory.

    ``data`` gives the archive's bytes instead of reading ``path`` (a remote worker); ``tmpdir`` is
    accepted for compatibility and unused (nothing is written). Hostile archives are refused with a
    one-line SourceError.
    """
    from p2pdma.sources.sysfs import read_root

    where = os.fspath(path)
    opened = open_archive(where, data=data)
    manifest = opened.manifest
    try:
        topo = read_root(opened.fs, name=name or machine_name(where), config_sizes=config_sizes(manifest))
    except SourceError as exc:
        raise SourceError(f"{where}: {exc}", exc.errno) from None
    notes = manifest_notes(manifest) if manifest else []
    if HMAT in opened.fs.files:
        notes.append("capture holds the ACPI HMAT table; its P2P paths are not decoded (no HMAT parser)")
    return dataclasses.replace(topo, warnings=(*topo.warnings, *notes), source=f"capture:{where}")


__all__ = [
    "ArchiveError",
    "OpenArchive",
    "is_archive",
    "load_capture",
    "machine_name",
    "open_archive",
]
