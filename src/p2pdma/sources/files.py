"""The one reading layer for files the tool opens: regular files only (a FIFO, device, socket or
directory is refused before it is read, and never opened in a way that blocks), a size cap per kind
of file, reads bounded by that cap, text decoded with the failing byte named, one-line errors.

    read_bytes(path, kind="spec")            -> bytes
    read_text(path, kind="sysfs", limit=...) -> str
    read_fd(fd, what, limit)                 -> bytes   (for callers that open relative to a dir fd)

Every error is a SourceError (an InputError: the CLI exits 2) with one line naming the path,
shortened when it is huge, and the errno of what failed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from p2pdma.errors import SourceError

KIB, MIB = 1 << 10, 1 << 20

# The most bytes each kind of file may have. A real file of each kind is far smaller; these stop a
# /dev/zero, a runaway generator or a wrong path from costing memory.
LIMITS: dict[str, int] = {
    "sysfs": 64 * KIB,  # one sysfs attribute: config is 4 KiB, resource a few hundred bytes
    "proc": 8 * MIB,  # /proc/cpuinfo of a many-core machine
    "spec": 16 * MIB,  # a machine spec (YAML or JSON)
    "scenario": 4 * MIB,
    "model": 1 * MIB,  # a checker model
    "manifest": 1 * MIB,  # a capture's manifest
    "xml": 64 * MIB,  # hwloc / NCCL topology XML
    "lspci": 64 * MIB,  # an lspci -vvv / -xxxx dump
    "pci.ids": 64 * MIB,  # read in bounded pieces (pci/ids.py), never whole
    "json": 16 * MIB,
    "yaml": 16 * MIB,
    "file": 16 * MIB,
}

SHOWN_PATH = 160  # characters of a path shown in an error line


def shown(path: str | os.PathLike[str] | bytes) -> str:
    """The path as an error line shows it: one line, at most SHOWN_PATH characters."""
    text = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) > SHOWN_PATH:
        text = f"{text[:60]}...({len(text)} characters)...{text[-60:]}"
    return text


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def limit_for(kind: str, limit: int | None = None) -> int:
    """The byte cap for ``kind`` (``limit`` overrides it)."""
    if limit is not None:
        return limit
    try:
        return LIMITS[kind]
    except KeyError:
        raise ValueError(f"unknown kind of file {kind!r} (one of {', '.join(LIMITS)})") from None


def _os_error(path: str | os.PathLike[str], exc: OSError) -> SourceError:
    why = exc.strerror or str(exc)
    return SourceError(f"{shown(path)}: cannot read ({why})", exc.errno or errno.EIO)


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None, follow: bool = True) -> int:
    """Open a regular file read-only and return its fd; anything else is refused without blocking.

    The path is stat()ed first so that a device node is never opened (opening one can have effects),
    then opened with O_NONBLOCK (a FIFO swapped in between cannot block) and fstat()ed again."""
    p = os.fspath(path)
    if p == "":
        raise SourceError("empty path: name a file", errno.ENOENT)
    if "\0" in p:
        raise SourceError(f"{shown(p)}: a path may not contain a NUL byte", errno.EINVAL)
    try:
        st = os.stat(p, dir_fd=dir_fd, follow_symlinks=follow)
    except OSError as exc:
        raise _os_error(p, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{shown(p)}: {_kind_of(st.st_mode)}, not a regular file", errno.EINVAL)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(p, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise _os_error(p, exc) from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _os_error(p, exc) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SourceError(f"{shown(p)}: {_kind_of(st.st_mode)}, not a regular file", errno.EINVAL)
    return fd


def read_fd(fd: int, what: str | os.PathLike[str], limit: int) -> bytes:
    """Read at most ``limit`` bytes from an open regular file; more is refused (EFBIG), naming ``what``.
    Reads to EOF rather than trusting st_size (sysfs and procfs files report 4096 or 0)."""
    try:
        st = os.fstat(fd)
        if st.st_size > limit:
            raise SourceError(f"{shown(what)}: {st.st_size} bytes, more than the {limit} bytes allowed here",
                              errno.EFBIG)
        parts: list[bytes] = []
        got = 0
        while True:
            chunk = os.read(fd, min(limit + 1 - got, 1 * MIB))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            if got > limit:
                raise SourceError(f"{shown(what)}: more than the {limit} bytes allowed here", errno.EFBIG)
    except BlockingIOError:
        raise SourceError(f"{shown(what)}: would block (not a plain file)", errno.EAGAIN) from None
    except OSError as exc:
        raise _os_error(what, exc) from None
    return b"".join(parts)


def read_bytes(path: str | os.PathLike[str], *, kind: str = "file", limit: int | None = None,
               dir_fd: int | None = None, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` (default: the cap of ``kind``) bytes."""
    cap = limit_for(kind, limit)
    fd = open_regular(path, dir_fd=dir_fd, follow=follow)
    try:
        return read_fd(fd, path, cap)
    finally:
        os.close(fd)


def decode(data: bytes, what: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """``data`` as text; a byte that does not decode is named with its offset (EILSEQ)."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise SourceError(f"{shown(what)}: not {encoding} text (byte 0x{bad} at offset {exc.start})",
                          errno.EILSEQ) from None
    except LookupError:
        raise SourceError(f"{shown(what)}: unknown encoding {encoding!r}", errno.EINVAL) from None


def read_text(path: str | os.PathLike[str], *, kind: str = "file", limit: int | None = None,
              encoding: str = "utf-8", dir_fd: int | None = None, follow: bool = True) -> str:
    """A regular file's text: bounded like read_bytes(), decoded strictly like decode()."""
    return decode(read_bytes(path, kind=kind, limit=limit, dir_fd=dir_fd, follow=follow), path, encoding)


def read_capped(path: str | os.PathLike[str], limit: int) -> tuple[bytes, str]:
    """Read a regular file of at most ``limit`` bytes; returns (data, name without .xml).
    SourceError with one line for anything else. (Kept for the XML and lspci sources.)"""
    p = Path(path)
    data = read_bytes(p, limit=limit)
    return data, (p.name[:-4] if p.name.lower().endswith(".xml") else p.name)
