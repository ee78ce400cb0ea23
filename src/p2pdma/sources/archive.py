"""Capture archives (``p2pdma capture`` output, or any tar of a sysfs/procfs root such as
hwloc-gather-topology's) read in memory: decompressed with a cap, every tar header parsed and checked
before anything is used, members indexed once into an ``ArchiveFs`` (names to spans of the stream:
no member's bytes are copied until read). Nothing is ever extracted.

Two paths check the same rules: a fast one (_fast_index: numpy over all headers at once, links
resolved through memoised directories) that takes plain archives and gives up on anything else, and
the reference one (iter_members, index_members, _chroot) that then decides and words the refusal.
tests/sources/test_archive_speed.py holds them to the same outcome.

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
import itertools
import json
import lzma
import operator
import os
import stat
import zlib
from typing import IO, Any, cast

import numpy as np

from p2pdma.errors import SourceError
from p2pdma.pci.topology import Topology
from p2pdma.sources.fs import MAX_LINK_HOPS, MAX_LOOKUP, ArchiveFs, LinkEscape, resolve, split

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
    limit = MAX_STREAM
    ratio_cap = max(RATIO_FLOOR, MAX_RATIO * len(raw))
    if head[:3] in (b"\x1f\x8b\x08", b"BZh") or head == b"\xfd7zXZ\x00":
        whole = _one_stream(raw, min(limit, ratio_cap))
        if whole is not None:
            return whole
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


def _one_stream(raw: bytes, cap: int) -> bytes | None:
    """``raw`` inflated in one call when it is a single well-formed gzip, bzip2 or xz stream of at
    most ``cap`` bytes with nothing after it (the usual capture); None for anything else (corrupt,
    several streams, trailing bytes, past a cap): decompress()'s streaming loop then decides and
    words it. One call skips the file objects' per-chunk copies (gzip: 2.0 ms, not 5, per 2 MB)."""
    dec: Any
    if raw[:2] == b"\x1f\x8b":
        dec = zlib.decompressobj(31)  # gzip framing; zlib checks the CRC-32 and length trailer
    elif raw[:3] == b"BZh":
        dec = bz2.BZ2Decompressor()
    else:
        dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        out = dec.decompress(raw, cap + 1)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return None
    if not dec.eof or dec.unused_data or len(out) > cap:
        return None
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
    files: dict[str, tuple[int, int]] = {}
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
            files[name] = (m.offset, m.size)
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
    return ArchiveFs(buf, files, links, {k: sorted(v) for k, v in dirs.items()}, label=label, resolved=resolved)


# --- the fast path -------------------------------------------------------------------------
#
# Every header is still parsed and checked, but with numpy over all headers at once; the Python loop
# only follows the chain of header offsets. The fast path accepts a strict subset of what the checks
# above accept (canonical number fields, no duplicates, no odd names, at most MAX_LINK_HOPS links
# counted the kernel's way, nested ones included) and builds the same index; on anything else it gives
# up (_Unusual) and the checks above decide, wording the refusal themselves.


class _Unusual(Exception):
    """The fast path does not take this archive; the reference checks decide."""


_EXT = (ord("x"), ord("L"), ord("K"), ord("g"))
_T_FILE = (ord("0"), 0, ord("7"))
_T_DIR = ord("5")
_T_LINK = ord("2")
# absolute, empty, doubled slashes, ``.`` or ``..`` components: in names joined and framed by NULs
_ODD_NAME = ("\0/", "\0\0", "//", "/./", "/../", "\0./", "\0../", "/.\0", "/..\0", "\0.\0", "\0..\0")


_POW8 = np.left_shift(np.int64(1), 3 * np.arange(10, -1, -1, dtype=np.int64))
_LO = np.uint64(0x00FF00FF00FF00FF)


def _octal_fields(fields: Any, digits: int) -> Any:
    """The values of tar number fields written the usual way (``digits`` octal digits, then NUL or
    space: ``%011o\\0``, ``%06o\\0 ``), -1 for any other field (the caller reads those with _octal())."""
    d = fields[:, :digits] - np.uint8(48)  # wraps for non-digits, so <= 7 means an octal digit
    end = fields[:, digits:]
    ok = np.all(d <= 7, axis=1) & np.all((end == 0) | (end == 32), axis=1)
    return np.where(ok, d.astype(np.int64) @ _POW8[11 - digits :], -1)


def _header_sums(blocks: Any) -> Any:
    """The byte sum of each 512-byte block (SWAR: 16-bit lanes of 64-bit words never overflow)."""
    words = blocks.view(np.uint64)
    lanes = ((words & _LO) + ((words >> np.uint64(8)) & _LO)).sum(axis=1, dtype=np.uint64)
    mask = np.uint64(0xFFFF)
    total = (lanes & mask) + ((lanes >> np.uint64(16)) & mask)
    total += ((lanes >> np.uint64(32)) & mask) + (lanes >> np.uint64(48))
    return total.astype(np.int64)


def _fallback(found: Any, blocks: Any, rows: Any, lo: int, hi: int, what: str) -> Any:
    """``found`` with its -1 entries read by _octal() from bytes lo:hi of the matching ``rows``."""
    bad = np.flatnonzero(found < 0)
    if len(bad):
        found = found.copy()
        for i in bad.tolist():
            try:
                found[i] = _octal(bytes(blocks[int(rows[i]), lo:hi]), what)
            except ArchiveError:
                raise _Unusual from None
    return found


def _strings(rows: Any, width: int) -> list[str] | None:
    """NUL-terminated text fields of ``rows`` (k x width bytes) as str; None when one holds bytes past
    its first NUL."""
    if not len(rows):
        return []
    raw = np.ascontiguousarray(rows).view(f"S{width}").ravel().tolist()
    joined = b"\0".join(raw)
    if joined.count(0) != len(raw) - 1:
        return None
    return joined.decode("utf-8", "surrogateescape").split("\0") if raw else []


def _fast_members(buf: bytes) -> tuple[list[str], list[int], list[int], list[int], list[int], list[str]]:
    """Names, type bytes, data offsets and sizes of every member, the rows of the links and their
    targets; _Unusual when anything is not plain."""
    nb = len(buf) // 512
    if nb == 0:
        raise _Unusual
    blocks = np.frombuffer(buf, np.uint8, nb * 512).reshape(nb, 512)
    sizes_all = _octal_fields(blocks[:, 124:136], 11)
    step = np.where(sizes_all >= 0, np.arange(1, nb + 1) + (sizes_all + 511) // 512, -1).tolist()
    chain: list[int] = []
    append = chain.append
    j = 0
    while j < nb:
        nxt = step[j]
        if nxt < 0:
            if buf[j * 512 : j * 512 + 512] == _ZERO:
                break
            try:
                nxt = j + 1 + (_octal(buf[j * 512 + 124 : j * 512 + 136], "size") + 511) // 512
            except ArchiveError:
                raise _Unusual from None
        if nxt > nb:
            raise _Unusual
        append(j)
        j = nxt
    if not chain:
        raise _Unusual
    idx = np.array(chain, dtype=np.intp)
    sizes = _fallback(sizes_all[idx], blocks, idx, 124, 136, "size")
    stored = _fallback(_octal_fields(blocks[idx, 148:156], 6), blocks, idx, 148, 156, "checksum")
    heads = blocks.take(idx, axis=0)  # the headers alone (a contiguous copy): summed, not every block
    sums = _header_sums(heads) - heads[:, 148:156].sum(axis=1, dtype=np.int64) + 256
    if not np.array_equal(sums, stored):
        raise _Unusual
    types = blocks[idx, 156]
    ext = np.isin(types, _EXT)
    member = ~ext
    mtypes = types[member]
    is_file = np.isin(mtypes, _T_FILE)
    if not np.all(is_file | (mtypes == _T_DIR) | (mtypes == _T_LINK)):
        raise _Unusual
    msizes = sizes[member]
    n_members = len(mtypes)
    if n_members > MAX_MEMBERS or n_members == 0:
        raise _Unusual
    if np.any(msizes[~is_file] != 0) or np.any(msizes > MAX_MEMBER_SIZE):
        raise _Unusual
    if int(msizes.sum()) > MAX_TOTAL_SIZE:
        raise _Unusual
    mrows = idx[member]
    names = _strings(blocks[mrows, 0:100], 100)
    if names is None:
        raise _Unusual
    posix = np.all(blocks[mrows, 257:263] == np.frombuffer(b"ustar\0", np.uint8), axis=1) & (blocks[mrows, 345] != 0)
    for r in np.flatnonzero(posix).tolist():
        names[r] = _text(bytes(blocks[int(mrows[r]), 345:500])) + "/" + names[r]
    offsets = (mrows * 512 + 512).tolist()
    kinds = mtypes.tolist()
    link_rows = np.flatnonzero(mtypes == _T_LINK)
    targets = _strings(blocks[mrows[link_rows], 157:257], 100)
    if targets is None:
        raise _Unusual
    if ext.any():
        # extended headers (GNU long names and links, pax records) apply to the next member
        row_of = (np.cumsum(member) - 1).tolist()  # member row of each header
        link_at = {r: i for i, r in enumerate(link_rows.tolist())}
        ext_pos = np.flatnonzero(ext).tolist()
        ext_set = set(ext_pos)
        ext_sizes = sizes[ext].tolist()
        ext_types = types[ext].tolist()
        lone = _lone_pax(buf, chain, ext_pos, ext_sizes, ext_types)
        if lone is not None:  # the usual case, each long name alone in a pax header before its member
            for h, is_link, value in lone:
                r = row_of[h + 1]
                if not is_link:
                    names[r] = value
                else:
                    li = link_at.get(r)
                    if li is not None:
                        targets[li] = value
            ext_pos = ext_sizes = ext_types = []  # applied: the general loop below has nothing to do
        pending: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        odd = False  # a pax header with more than one path or linkpath record
        for h, size, kind in zip(ext_pos, ext_sizes, ext_types, strict=True):
            if size > MAX_MEMBER_SIZE:
                raise _Unusual
            at = chain[h] * 512 + 512
            data = buf[at : at + size]
            if kind == 120:  # x
                record = _one_record(data)
                if record is not None and record[0] in ("path", "linkpath"):
                    pending[record[0]] = record[1]
                else:
                    try:
                        pending.update(_pax(data))
                    except ArchiveError:
                        raise _Unusual from None
                    odd = True
            elif kind == 76:  # L: a pax path still wins, as in iter_members()
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == 75:  # K
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                raise _Unusual
            if h + 1 in ext_set:
                continue
            if h + 1 >= len(chain):
                raise _Unusual
            if odd and ("size" in pending or any(k.startswith("GNU.sparse") for k in pending)):
                raise _Unusual
            r = row_of[h + 1]
            path = pending.get("path", long_name)
            if path is not None:
                names[r] = path
            link = pending.get("linkpath", long_link)
            if link is not None:
                li = link_at.get(r)
                if li is not None:
                    targets[li] = link
            pending = {}
            long_name = long_link = None
            odd = False
    for r in np.flatnonzero(mtypes == 0).tolist():
        if names[r].endswith("/"):
            if int(msizes[r]) != 0:
                raise _Unusual
            kinds[r] = _T_DIR
    return names, kinds, offsets, msizes.tolist(), link_rows.tolist(), targets


def _lone_pax(buf: bytes, chain: list[int], ext_pos: list[int], ext_sizes: list[int],
              ext_types: list[int]) -> list[tuple[int, bool, str]] | None:
    """(header, linkpath or path, value) for extended headers that are each one pax header holding a
    single ``path`` or ``linkpath`` record written canonically (``%d path=VALUE\n``) right before its
    member, as tarfile and capture.py write long names; None when any is otherwise (the general loop
    in _fast_members reads them). Each value is what _one_record() reads from the same bytes."""
    if any(k != 120 for k in ext_types) or ext_pos[-1] + 1 >= len(chain):
        return None
    if len(ext_pos) > 1 and min(b - a for a, b in itertools.pairwise(ext_pos)) < 2:
        return None  # two extended headers in a row
    out: list[tuple[int, bool, str]] = []
    append = out.append
    for h, size in zip(ext_pos, ext_sizes, strict=True):
        if not 0 < size <= MAX_MEMBER_SIZE:
            return None
        at = chain[h] * 512 + 512
        end = at + size - 1
        if buf[end] != 10:
            return None
        pre = b"%d path=" % size
        if buf.startswith(pre, at, end):
            append((h, False, buf[at + len(pre) : end].decode("utf-8", "surrogateescape")))
            continue
        pre = b"%d linkpath=" % size
        if not buf.startswith(pre, at, end):
            return None
        append((h, True, buf[at + len(pre) : end].decode("utf-8", "surrogateescape")))
    return out


def _one_record(data: bytes) -> tuple[str, str] | None:
    """The key and value of a pax header holding exactly one record, as _pax() reads it; None for
    anything else (then _pax() reads it)."""
    sp = data.find(b" ", 0, 24)
    if sp <= 0 or data[-1:] != b"\n":
        return None
    try:
        if int(data[:sp]) != len(data):
            return None
    except ValueError:
        return None
    key, eq, value = data[sp + 1 : -1].partition(b"=")
    if not eq:
        return None
    return key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")


def _clean_names(names: list[str]) -> str:
    """The members' names, NUL-framed (``\\0a\\0b/c\\0``), one trailing slash dropped; _Unusual for an
    absolute, NUL-holding or over-long name. Empty, ``.`` and ``..`` components and depth are checked
    as the directories are listed (_fast_index)."""
    joined = "\0" + "\0".join(names) + "\0"
    if joined.count("\0") != len(names) + 1 or "\0/" in joined or max(map(len, names)) > MAX_NAME:
        raise _Unusual
    return joined.replace("/\0", "\0") if "/\0" in joined else joined


def _fast_links(links: dict[str, str]) -> dict[str, str]:
    """Every link resolved inside the root, as resolve() does; _Unusual for a link out, a loop, an odd
    target or more than MAX_LINK_HOPS links on one path (counted with the nested ones).

    Members' parents are directories (checked before), so a link's parent is its real place and the
    leading ``..`` of its target climb real directories; what follows is plain names, resolved left to
    right through memoised directories: ``dirs`` maps a path to its real place and the links followed.
    """
    done: dict[str, tuple[str, int]] = {}
    busy: set[str] = set()
    dirs: dict[str, tuple[str, int]] = {"": ("", 0)}

    def walk(path: str) -> tuple[str, int]:
        hit = dirs.get(path)
        if hit is not None:
            return hit
        head, _, tail = path.rpartition("/")
        base, hops = walk(head) if head else ("", 0)
        cand = f"{base}/{tail}" if base else tail
        if cand in links:
            real, more = done.get(cand) or follow(cand)
            hit = (real, hops + 1 + more)
        else:
            hit = (cand, hops)
        dirs[path] = hit
        return hit

    def follow(name: str) -> tuple[str, int]:
        if name in busy:
            raise _Unusual  # a loop
        busy.add(name)
        target = links[name]
        if not target or target[0] == "/" or "\0" in target or len(target) > MAX_LINK_TARGET:
            raise _Unusual
        base = name.rpartition("/")[0]
        while target[:3] == "../":
            if not base:
                raise _Unusual
            base = base.rpartition("/")[0]
            target = target[3:]
        if target[:1] == "." or "/." in target or "//" in target or target[-1:] == "/":
            parts = split(target)
            while parts and parts[0] == "..":
                if not base:
                    raise _Unusual
                base = base.rpartition("/")[0]
                del parts[0]
            if ".." in parts:
                raise _Unusual  # a/../b: a may be a link; resolve() decides
            target = "/".join(parts)
        if len(base) + len(target) >= MAX_LOOKUP // 2:
            raise _Unusual
        if not target:
            hit = walk(base)
        else:
            head, _, tail = target.rpartition("/")
            where = (f"{base}/{head}" if head else base) if base else head
            up = dirs.get(where) or walk(where)
            cand = f"{up[0]}/{tail}" if up[0] else tail
            if cand in links:
                real, more = done.get(cand) or follow(cand)
                hit = (real, up[1] + 1 + more)
            else:
                hit = (cand, up[1])
        if hit[1] > MAX_LINK_HOPS:
            raise _Unusual
        busy.discard(name)
        done[name] = hit
        return hit

    # the usual link (``../../devices/x/y``, nothing odd, no link on the way) inline; the rest by follow()
    if not links:
        return {}
    targets = links.values()
    if "\0".join(targets).count("\0") != len(links) - 1 or max(map(len, targets)) > MAX_LINK_TARGET:
        raise _Unusual
    if max(map(len, links)) + max(map(len, targets)) >= MAX_LOOKUP // 2:
        raise _Unusual  # paths past what resolve() looks up: it decides
    get = dirs.get
    for name, target in links.items():
        if name in done:
            continue
        rest = target.lstrip("./")
        lead = len(target) - len(rest)
        up = lead // 3
        if (lead and target[:lead] != "../" * up) or not rest or "/." in rest or "//" in rest or rest[-1] == "/":
            follow(name)
            continue
        base = name.rpartition("/")[0]
        if up:
            parts = base.rsplit("/", up)
            if len(parts) > up:
                base = parts[0]
            elif len(parts) == up and base:
                base = ""
            else:
                raise _Unusual  # out of the root
        head, _, tail = rest.rpartition("/")
        where = (f"{base}/{head}" if head else base) if base else head
        hit = get(where) or walk(where)
        cand = f"{hit[0]}/{tail}" if hit[0] else tail
        if cand in links:
            follow(name)
            continue
        done[name] = (cand, hit[1])
    if done and max(hops for _, hops in done.values()) > MAX_LINK_HOPS:
        raise _Unusual
    return {name: hit[0] for name, hit in done.items()}


def _pick(seq: list[Any], rows: list[int]) -> list[Any]:
    if not rows:
        return []
    got = operator.itemgetter(*rows)(seq)
    return list(got) if len(rows) > 1 else [got]


_DOTS = frozenset(("", ".", ".."))


def _fast_index(buf: bytes, label: str) -> tuple[ArchiveFs, tuple[int, int] | None]:
    """The archive's view below its root and the span of a manifest beside that root, built by the
    fast path; _Unusual when the reference checks must decide."""
    raw, kinds, offsets, sizes, link_rows, targets = _fast_members(buf)
    joined = _clean_names(raw)
    while "\0./" in joined:  # tar -C root -cf x.tar .
        joined = joined.replace("\0./", "\0")
    while "\0.\0" in joined:
        joined = joined.replace("\0.\0", "\0\0")
    if "\0\0" in joined:  # the root itself: skipped when a directory, as index_members() does
        names = joined[1:-1].split("\0")
        roots = [i for i, x in enumerate(names) if not x]
        if any(kinds[i] != _T_DIR for i in roots):
            raise _Unusual
        link_rows = _drop(roots, names, kinds, offsets, sizes, link_rows)
        joined = "\0" + "\0".join(names) + "\0"
    if joined == "\0":
        raise _Unusual

    def row(name: str) -> int:
        """The member row of ``name`` (the first one), -1 if none."""
        at = joined.find("\0" + name + "\0")
        return -1 if at < 0 else joined.count("\0", 0, at)

    top_manifest: tuple[int, int] | None = None
    depth = 0
    r_sys = row("sys")
    if not (kinds[r_sys] == _T_DIR if r_sys >= 0 else "\0sys/" in joined):
        # hwloc-gather-topology's layout: one top folder holding sys (and a manifest beside it)
        first, second = (joined[1:-1].split("\0", 2) + [""])[:2]
        top = (second if first == MANIFEST else first).partition("/")[0]
        pre = top + "/"
        r_top, r_man, r_ps = row(top), row(MANIFEST), row(pre + "sys")
        dropped = [r for r in (r_top, r_man) if r >= 0]
        if top in _DOTS or joined.count("\0" + pre) + len(dropped) != len(kinds):
            raise _Unusual
        if (r_top >= 0 and kinds[r_top] != _T_DIR) or (r_man >= 0 and not _is_file(kinds[r_man])):
            raise _Unusual
        if not (kinds[r_ps] == _T_DIR if r_ps >= 0 else "\0" + pre + "sys/" in joined):
            raise _Unusual
        if r_man >= 0:
            top_manifest = (offsets[r_man], sizes[r_man])
        names = joined.replace("\0" + pre, "\0")[1:-1].split("\0")
        link_rows = _drop(dropped, names, kinds, offsets, sizes, link_rows)
        depth = 1
    else:
        names = joined[1:-1].split("\0")
    kind_of = dict(zip(names, kinds, strict=True))
    if len(kind_of) != len(names) or not names:
        raise _Unusual  # a duplicate
    karr = np.array(kinds, dtype=np.uint8)
    frows = np.flatnonzero((karr != _T_DIR) & (karr != _T_LINK)).tolist()
    files = dict(zip(_pick(names, frows), zip(_pick(offsets, frows), _pick(sizes, frows), strict=True), strict=True))
    links = dict(zip(_pick(names, link_rows), targets, strict=True))
    children: dict[str, list[str]] = {"": []}
    get = children.get
    for parent, _, base in map(str.rpartition, names, itertools.repeat("/")):
        if base in _DOTS:
            raise _Unusual
        entries = get(parent)
        if entries is None:
            children[parent] = [base]
        else:
            entries.append(base)
    work = [d for d in children if d and d not in kind_of]
    while work:
        d = work.pop()
        parent, _, base = d.rpartition("/")
        if base in _DOTS:
            raise _Unusual
        entries = get(parent)
        if entries is None:
            children[parent] = [base]
            if parent and parent not in kind_of:
                work.append(parent)
        else:
            entries.append(base)
    for d in children:
        if d and kind_of.get(d, _T_DIR) != _T_DIR:
            raise _Unusual  # a member below a file or link
    if depth + 1 + max(map(str.count, children, itertools.repeat("/"))) + 1 > MAX_DEPTH:
        raise _Unusual
    for x in _pick(names, np.flatnonzero(karr == _T_DIR).tolist()):
        if x not in children:
            children[x] = []
    resolved = _fast_links(links)
    return ArchiveFs(buf, files, links, children, label=label, resolved=resolved), top_manifest


def _drop(rows: list[int], names: list[str], kinds: list[int], offsets: list[int], sizes: list[int],
          link_rows: list[int]) -> list[int]:
    """Delete members ``rows`` (no links) from the lists in place; the link rows renumbered."""
    lrows = np.asarray(link_rows, dtype=np.intp)
    for i in sorted(rows, reverse=True):
        del names[i], kinds[i], offsets[i], sizes[i]
        lrows -= lrows > i
    return list(lrows.tolist())


def _is_file(kind: int) -> bool:
    return kind != _T_DIR and kind != _T_LINK


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
    return ArchiveFs(fs.data, files, links, dirs, label=fs.label, resolved=resolved)


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
        try:
            fs, top_manifest = _fast_index(buf, where)
        except _Unusual:
            whole = index_members(buf, iter_members(buf), label=where)
            prefix = _root_prefix(whole)
            manifest = _read_manifest(whole, prefix)
            return OpenArchive(_chroot(whole, prefix), manifest)
        span = top_manifest or fs.files.get(MANIFEST)
        return OpenArchive(fs, _manifest(buf[span[0] : span[0] + span[1]]) if span else None)
    except ArchiveError as exc:
        raise SourceError(f"{where}: refused: {exc}") from None


def _read_manifest(fs: ArchiveFs, prefix: str) -> dict[str, Any] | None:
    for name in (MANIFEST, f"{prefix}/{MANIFEST}" if prefix else None):
        if name is None or name not in fs.files:
            continue
        at, size = fs.files[name]
        return _manifest(fs.data[at : at + size])
    return None


def _manifest(data: bytes) -> dict[str, Any]:
    from p2pdma.sources.safeload import MAX_DEPTH, depth_of

    deep = f"manifest {MANIFEST} is nested deeper than {MAX_DEPTH} levels"
    try:
        doc = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ArchiveError(deep) from None
    except ValueError as exc:
        raise ArchiveError(f"manifest {MANIFEST} is not JSON ({_one_line(exc)})") from None
    if depth_of(doc, MAX_DEPTH) > MAX_DEPTH:
        raise ArchiveError(deep)
    if not isinstance(doc, dict) or doc.get("schema") not in CAPTURE_SCHEMAS:
        raise ArchiveError(f"manifest {MANIFEST} is not a {CAPTURE_SCHEMAS[-1]} document")
    return doc


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
