"""Capture the sysfs/procfs files the P2P verdict reads into one archive, and load such an archive.

Capturing uses only the standard library and imports nothing of p2pdma, so this file also runs on
its own on any Linux host with Python 3.7 or newer: ``python3 capture.py OUT.tar.gz [--root /]``.
It reads exactly what ``sources.sysfs.read_root()`` reads (per PCI function: config, ids, class,
resource, NUMA node, link speed/width, the iommu_group/driver/physfn links; cpuinfo, the kernel
release, the ACPI HMAT table when readable), keeps links as links, never follows one out of the
root, and writes nothing but OUT. A manifest inside (``p2pdma-capture.json``) says what could not
be read and the kernel's ``config`` file sizes (cfg_size), so the loader can tell an absent ACS
capability from an unreadable one.

Loading (``load_capture()``, used by ``--root X.tar.gz``) validates every member before writing
anything, extracts into a private temporary directory, reads it with ``read_root()`` and removes it.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, cast

try:  # optional in minimal Python builds: the capture works without them (gzip or plain tar)
    import bz2
except ImportError:  # pragma: no cover
    bz2 = None  # type: ignore[assignment]
try:
    import lzma
except ImportError:  # pragma: no cover
    lzma = None  # type: ignore[assignment]

if TYPE_CHECKING:  # the loader's types; nothing of p2pdma is imported at run time for capturing
    from collections.abc import Callable, Sequence

    from p2pdma.pci.topology import Topology

SCHEMA = "p2pdma.capture/1"
MANIFEST = "p2pdma-capture.json"
PCI_DEVICES = "sys/bus/pci/devices"
# Per function: what read_root() opens (files) and the links whose names it reads (not followed).
DEVICE_FILES = (
    "config",
    "vendor",
    "device",
    "class",
    "resource",
    "numa_node",
    "max_link_speed",
    "max_link_width",
    "current_link_speed",
    "current_link_width",
)
DEVICE_LINKS = ("iommu_group", "driver", "physfn")
CPUINFO = "proc/cpuinfo"
OSRELEASE = "proc/sys/kernel/osrelease"
HMAT = "sys/firmware/acpi/tables/HMAT"
CONFIG_MAX = 4096  # PCI_CFG_SPACE_EXP_SIZE
PCI_CFG_SPACE_SIZE_UNPRIV = 64  # what the kernel lets a non-root reader see of config space
MAX_LINK_HOPS = 40

# Capture bounds: the archive never grows past these, whatever the host.
CAPTURE_MAX_FILE = 1 << 20
CAPTURE_MAX_FUNCTIONS = 16384
CAPTURE_MAX_BYTES = 64 << 20

# Loading bounds: a hostile archive is refused before anything is written.
MAX_MEMBERS = 65536
MAX_MEMBER_SIZE = 4 << 20
MAX_TOTAL_SIZE = 64 << 20
MAX_STREAM = MAX_TOTAL_SIZE + MAX_MEMBERS * 1536  # decompressed bytes, headers included
MAX_ARCHIVE_SIZE = 256 << 20
MAX_NAME = 1024
MAX_DEPTH = 64
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) + (
    (lzma.LZMAError,) if lzma is not None else ()
)


class CaptureError(Exception):
    """A capture could not be written or an archive is refused; the message is one line."""


class _Escape(Exception):
    """A path or link resolves to a place outside the root."""


# --------------------------------------------------------------------------------------------
# Capturing (standard library only)
# --------------------------------------------------------------------------------------------


def _split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


def _resolve(rel: str, readlink: Callable[[str], str | None]) -> str:
    """Follow links chroot-style, asking ``readlink(root-relative path)`` for a link's target (None:
    not a link). An absolute target restarts at the root; ``..`` above the root or a loop raises
    _Escape. The same rules as sources.sysfs.resolve_in_root(), without its imports."""
    parts = _split(rel)
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not done:
                raise _Escape(rel)
            done.pop()
            continue
        target = readlink("/".join([*done, part]))
        if target is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise _Escape(rel)
            if target.startswith("/"):
                done = []
            parts = _split(target) + parts
            continue
        done.append(part)
    return "/".join(done)


def resolve_chroot(root: str, rel: str) -> str:
    """Resolve ``rel`` inside the directory ``root`` as if ``root`` were ``/``."""

    def readlink(path: str) -> str | None:
        cand = os.path.join(root, path)
        try:
            if stat.S_ISLNK(os.lstat(cand).st_mode):
                return os.readlink(cand)
        except OSError:
            pass
        return None

    return _resolve(rel, readlink)


def _relative_link(link_rel: str, target_rel: str) -> str:
    """A relative link text leading from the link at ``link_rel`` to ``target_rel`` (both
    root-relative)."""
    return posixpath.relpath(target_rel or ".", posixpath.dirname(link_rel) or ".")


def _first_cpu(text: bytes) -> bytes:
    """The first processor's block of /proc/cpuinfo: all parse_cpuinfo() reads."""
    lines = text.split(b"\n")
    out: list[bytes] = []
    for line in lines:
        if not line.strip():
            if out:
                break
            continue
        out.append(line)
    return b"\n".join(out) + b"\n\n" if out else b""


class _Capture:
    """One capture run: the members gathered in memory, and what could not be read."""

    def __init__(self, root: str, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.dirs: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.size = 0
        self.unreadable: list[dict[str, str]] = []
        self.truncated: list[dict[str, Any]] = []
        self.skipped_links: list[dict[str, str]] = []

    def _note(self, rel: str, reason: str) -> None:
        self.unreadable.append({"path": rel, "reason": reason})

    def _add_dirs(self, rel: str) -> None:
        parts = _split(rel)
        for i in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:i]))

    def _account(self, n: int) -> None:
        self.size += n + 512
        if self.size > self.max_bytes:
            raise CaptureError(f"capture would exceed {self.max_bytes} bytes; refusing to write more")

    def add_file(self, rel: str, limit: int = CAPTURE_MAX_FILE, *, required: bool = True) -> bytes | None:
        """Copy the regular file at ``rel`` (links on the way resolved inside the root)."""
        try:
            real = resolve_chroot(self.root, rel)
        except _Escape:
            self._note(rel, "link leads outside the root, not followed")
            return None
        path = os.path.join(self.root, real)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if required:
                self._note(rel, "missing")
            return None
        except OSError as exc:
            self._note(rel, exc.strerror or str(exc))
            return None
        if not stat.S_ISREG(st.st_mode):
            self._note(rel, "not a regular file, skipped")
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                data = f.read(limit)
        except OSError as exc:
            self._note(rel, exc.strerror or str(exc))
            return None
        if real != rel:
            self._add_link_chain(rel)
        self._add_dirs(posixpath.dirname(real))
        self._account(len(data))
        self.files[real] = data
        return data

    def _add_link_chain(self, rel: str) -> None:
        """Record the links met while resolving ``rel`` (so the archive resolves the same way)."""
        parts = _split(rel)
        done: list[str] = []
        hops = 0
        while parts and hops <= MAX_LINK_HOPS:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join([*done, part])
            if os.path.islink(os.path.join(self.root, cand)):
                hops += 1
                self.add_link(cand)
                target = os.readlink(os.path.join(self.root, cand))
                if target.startswith("/"):
                    done = []
                parts = _split(target) + parts
                continue
            done.append(part)

    def add_link(self, rel: str, *, required: bool = False) -> str | None:
        """Record the link at ``rel`` as a link, not followed; an absolute target becomes the
        relative one it means inside the root, a target climbing out of the root is skipped."""
        path = os.path.join(self.root, rel)
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            if required:
                self._note(rel, "missing")
            return None
        except OSError as exc:
            if os.path.lexists(path):
                self._note(rel, exc.strerror or str(exc))
            return None
        parent = posixpath.dirname(rel)
        try:
            real_parent = resolve_chroot(self.root, parent)
        except _Escape:
            self.skipped_links.append({"path": rel, "target": target, "reason": "leads outside the root"})
            return None
        if real_parent != parent:
            self._add_link_chain(parent)
        link_at = posixpath.join(real_parent, posixpath.basename(rel)) if real_parent else posixpath.basename(rel)
        if target.startswith("/"):
            text = _relative_link(link_at, posixpath.normpath(target).lstrip("/"))
        else:
            lexical = posixpath.normpath(posixpath.join(real_parent, target))
            if lexical == ".." or lexical.startswith("../"):
                self.skipped_links.append({"path": rel, "target": target, "reason": "leads outside the root"})
                return None
            text = target
        self._add_dirs(real_parent)
        self._account(len(text))
        self.links[link_at] = text
        return text

    def drop_escaping_links(self) -> None:
        """Drop links that the loader's check (through the archive's own links) would see leave
        the root: the archive must always load."""
        changed = True
        while changed:
            changed = False
            for name in sorted(self.links):
                target = self.links[name]
                try:
                    _virtual_resolve(self.links, posixpath.join(posixpath.dirname(name), target))
                except _Escape:
                    del self.links[name]
                    self.skipped_links.append({"path": name, "target": target, "reason": "leads outside the root"})
                    changed = True

    def write(self, out: str, manifest: dict[str, Any]) -> int:
        """Write the members (directories first, then files and links, each sorted) to ``out``."""
        blob = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        buf = io.BytesIO()
        mode = _compression_of(out)
        raw: IO[bytes]
        if mode == "gz":
            raw = cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0))
        elif mode == "bz2":
            raw = bz2.BZ2File(buf, "wb")
        elif mode == "xz":
            raw = lzma.LZMAFile(buf, "wb")
        else:
            raw = buf
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(_info(MANIFEST, tarfile.REGTYPE, len(blob)), io.BytesIO(blob))
            for d in sorted(self.dirs):
                tf.addfile(_info(d, tarfile.DIRTYPE, 0))
            for name in sorted(set(self.files) | set(self.links)):
                if name in self.links:
                    ti = _info(name, tarfile.SYMTYPE, 0)
                    ti.linkname = self.links[name]
                    tf.addfile(ti)
                else:
                    data = self.files[name]
                    tf.addfile(_info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))
        if raw is not buf:
            raw.close()
        data = buf.getvalue()
        try:
            with open(out, "wb") as f:
                f.write(data)
        except OSError as exc:
            try:
                os.unlink(out)
            except OSError:
                pass
            raise CaptureError(f"{out}: cannot write ({exc.strerror or exc})") from None
        return len(data)


def _info(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o777 if kind == tarfile.SYMTYPE else 0o644
    ti.mtime = 0
    ti.uname = ti.gname = "root"
    return ti


def _compression_of(name: str) -> str:
    low = name.lower()
    if low.endswith((".tar.bz2", ".tbz2")):
        return "bz2"
    if low.endswith((".tar.xz", ".txz")):
        return "xz"
    if low.endswith(".tar"):
        return "none"
    return "gz"


def capture(
    out: str,
    root: str = "/",
    *,
    max_functions: int = CAPTURE_MAX_FUNCTIONS,
    max_bytes: int = CAPTURE_MAX_BYTES,
) -> dict[str, Any]:
    """Write the files the verdict reads under ``root`` into the archive ``out``; returns the manifest.

    Raises CaptureError (nothing written) when ``root`` has no PCI devices directory or the
    capture would exceed its bounds.
    """
    root = os.path.abspath(root)
    live = root == "/"
    cap = _Capture(root, max_bytes)
    try:
        devdir = resolve_chroot(root, PCI_DEVICES)
        entries = sorted(os.listdir(os.path.join(root, devdir)))
    except (_Escape, OSError) as exc:
        raise CaptureError(f"{os.path.join(root, PCI_DEVICES)}: cannot list PCI devices ({exc})") from None
    if len(entries) > max_functions:
        raise CaptureError(f"{len(entries)} PCI functions: more than the capture bound {max_functions}")
    config_sizes: dict[str, int] = {}
    functions = 0
    for entry in entries:
        rel = f"{PCI_DEVICES}/{entry}"
        if os.path.islink(os.path.join(root, devdir, entry)):
            cap.add_link(rel)
        try:
            real = resolve_chroot(root, rel)
        except _Escape:
            cap.skipped_links.append({"path": rel, "target": "", "reason": "leads outside the root"})
            continue
        if not os.path.isdir(os.path.join(root, real)):
            cap._note(rel, "does not lead to a device directory")
            continue
        functions += 1
        cap._add_dirs(real)
        for fname in DEVICE_FILES:
            limit = CONFIG_MAX if fname == "config" else CAPTURE_MAX_FILE
            data = cap.add_file(f"{real}/{fname}", limit, required=fname in ("config", "vendor", "device"))
            if fname == "config" and data is not None:
                try:
                    size = os.stat(os.path.join(root, real, fname)).st_size
                except OSError:
                    continue
                config_sizes[entry] = size
                if len(data) < size:
                    why = (
                        "config space past 64 bytes needs root"
                        if len(data) == PCI_CFG_SPACE_SIZE_UNPRIV and os.geteuid() != 0
                        else "short read"
                    )
                    cap.truncated.append({"path": f"{real}/{fname}", "read": len(data), "size": size, "reason": why})
        for lname in DEVICE_LINKS:
            cap.add_link(f"{real}/{lname}")
    cpuinfo = cap.add_file(CPUINFO)
    if cpuinfo is not None:
        cap.files[resolve_chroot(root, CPUINFO)] = _first_cpu(cpuinfo)
    cap.add_file(OSRELEASE)
    cap.add_file(HMAT, required=False)
    cap.drop_escaping_links()
    uname = os.uname()
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": uname.nodename if live else os.path.basename(root.rstrip("/")) or root,
        "source_root": root,
        "live": live,
        "euid": os.geteuid(),
        "python": sys.version.split()[0],
        "functions": functions,
        "config_sizes": config_sizes,
        "unreadable": cap.unreadable,
        "truncated": cap.truncated,
        "skipped_links": cap.skipped_links,
        "limits": {"max_functions": max_functions, "max_bytes": max_bytes, "max_file": CAPTURE_MAX_FILE},
    }
    manifest["archive_bytes"] = cap.write(out, manifest)
    return manifest


def describe(manifest: dict[str, Any], out: str) -> list[str]:
    """The lines a capture prints: what it wrote, and what it could not read (and what that hides)."""
    lines = [f"captured {manifest['functions']} PCI functions into {out} ({manifest['archive_bytes']} bytes)"]
    trunc = manifest["truncated"]
    if trunc:
        lines.append(
            f"could not read: config space of {len(trunc)} functions past {trunc[0]['read']} bytes"
            f" ({trunc[0]['reason']}): ACS is unknown for them"
        )
    for u in manifest["unreadable"][:8]:
        lines.append(f"could not read: {u['path']} ({u['reason']})")
    if len(manifest["unreadable"]) > 8:
        lines.append(f"could not read: ... and {len(manifest['unreadable']) - 8} more (see {MANIFEST})")
    for s in manifest["skipped_links"][:8]:
        lines.append(f"not followed: {s['path']} ({s['reason']})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python3 capture.py OUT.tar.gz [--root /]``; exit 2 on error."""
    p = argparse.ArgumentParser(prog="capture.py", description="Capture what the P2P verdict reads.")
    p.add_argument("out", metavar="OUT.tar.gz", help="archive to write (.tar.gz, .tar, .tar.bz2, .tar.xz)")
    p.add_argument("--root", "--source-root", dest="root", default="/", help="root to capture (default /)")
    args = p.parse_args(argv)
    try:
        manifest = capture(args.out, args.root)
    except CaptureError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 2
    for line in describe(manifest, args.out):
        print(line, file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# Loading (safe against hostile archives)
# --------------------------------------------------------------------------------------------


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a capture archive by its suffix."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


class _Capped(io.RawIOBase):
    """A read/seek view of a (decompressing) stream that refuses to go past ``limit`` bytes."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check(self, pos: int) -> None:
        if pos > self.limit:
            raise CaptureError(f"archive expands past {self.limit} bytes")

    def read(self, size: int | None = -1) -> bytes:
        pos = self.inner.tell()
        if size is None or size < 0 or size > MAX_MEMBER_SIZE + 512:
            # tarfile reads data in small blocks; one huge read is a hostile pax/long-name header
            raise CaptureError(f"a header declares more than {MAX_MEMBER_SIZE} bytes")
        data = self.inner.read(min(size, self.limit + 1 - pos))
        self._check(pos + len(data))
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_CUR:
            offset += self.inner.tell()
            whence = os.SEEK_SET
        if whence != os.SEEK_SET:
            raise OSError("only absolute seeks")
        self._check(offset)
        return self.inner.seek(offset)

    def tell(self) -> int:
        return self.inner.tell()


def _open_stream(raw: IO[bytes]) -> IO[bytes]:
    """Pick the decompressor from the magic bytes (gzip, bzip2, xz, or a plain tar)."""
    head = raw.read(6)
    raw.seek(0)
    inner: IO[bytes]
    if head[:2] == b"\x1f\x8b":
        inner = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    elif head[:3] == b"BZh" and bz2 is not None:
        inner = bz2.BZ2File(raw, "rb")
    elif head == b"\xfd7zXZ\x00" and lzma is not None:
        inner = lzma.LZMAFile(raw, "rb")
    else:
        inner = raw
    return cast(IO[bytes], _Capped(inner, MAX_STREAM))


def _clean_name(raw_name: str) -> str:
    """The member's normalised relative path; CaptureError for absolute or ``..`` names."""
    shown = repr(raw_name[:80])
    if "\x00" in raw_name:
        raise CaptureError(f"member {shown} has a NUL byte in its name")
    if raw_name.startswith("/"):
        raise CaptureError(f"member {shown} is an absolute path")
    if len(raw_name) > MAX_NAME:
        raise CaptureError(f"member {shown}... has a name longer than {MAX_NAME} characters")
    parts = [p for p in raw_name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CaptureError(f"member {shown} climbs out with '..'")
    if len(parts) > MAX_DEPTH:
        raise CaptureError(f"member {shown} is nested deeper than {MAX_DEPTH} levels")
    return "/".join(parts)


def _virtual_resolve(links: dict[str, str], rel: str) -> str:
    """Resolve ``rel`` through the archive's own links (absolute targets restart at its root)."""
    return _resolve(rel, links.get)


def validate_members(tf: tarfile.TarFile) -> list[tuple[str, tarfile.TarInfo]]:
    """Read every header and check it before anything is written: names, types, sizes, counts,
    and that no link leads out of the root (following chains of links inside the archive)."""
    out: list[tuple[str, tarfile.TarInfo]] = []
    seen: dict[str, bytes] = {}
    links: dict[str, str] = {}
    total = 0
    count = 0
    while True:
        try:
            m = tf.next()
        except CaptureError:
            raise
        except _ARCHIVE_ERRORS as exc:
            raise CaptureError(f"not a readable tar archive ({_one_line(exc)})") from None
        if m is None:
            break
        count += 1
        if count > MAX_MEMBERS:
            raise CaptureError(f"more than {MAX_MEMBERS} members")
        name = _clean_name(m.name)
        shown = repr(m.name[:80])
        if m.issym():
            target = m.linkname
            if not target or "\x00" in target:
                raise CaptureError(f"link {shown} has an empty or NUL target")
            if target.startswith("/"):
                raise CaptureError(f"link {shown} -> {target[:80]!r} leads outside the root (absolute)")
            links[name] = target
        elif m.islnk():
            raise CaptureError(f"member {shown} is a hard link (to {m.linkname[:80]!r}): not allowed in a capture")
        elif m.isdir():
            pass
        elif m.type == tarfile.GNUTYPE_SPARSE or getattr(m, "sparse", None):
            raise CaptureError(f"member {shown} is a sparse file: not allowed")
        elif m.isreg():
            if m.size > MAX_MEMBER_SIZE:
                raise CaptureError(f"member {shown} declares {m.size} bytes (more than {MAX_MEMBER_SIZE})")
            total += m.size
            if total > MAX_TOTAL_SIZE:
                raise CaptureError(f"members total more than {MAX_TOTAL_SIZE} bytes")
        elif m.ischr() or m.isblk():
            raise CaptureError(f"member {shown} is a device file: not allowed")
        elif m.isfifo():
            raise CaptureError(f"member {shown} is a FIFO: not allowed")
        else:
            raise CaptureError(f"member {shown} has unsupported type {m.type!r}")
        if not name:
            if m.isdir():
                continue
            raise CaptureError(f"member {shown} names the root itself")
        if name in seen and not (m.isdir() and seen[name] == tarfile.DIRTYPE):
            raise CaptureError(f"member {shown} appears twice")
        seen[name] = tarfile.DIRTYPE if m.isdir() else m.type
        out.append((name, m))
    for name, _ in out:
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            kind = seen.get(prefix)
            if kind is not None and kind != tarfile.DIRTYPE:
                raise CaptureError(f"member {name[:80]!r} lies below {prefix[:80]!r}, which is not a directory")
    for name, target in links.items():
        try:
            _virtual_resolve(links, posixpath.join(posixpath.dirname(name), target))
        except _Escape:
            raise CaptureError(f"link {name[:80]!r} -> {target[:80]!r} leads outside the root") from None
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text.splitlines() else type(exc).__name__


def _extract(tf: tarfile.TarFile, members: list[tuple[str, tarfile.TarInfo]], dest: str) -> None:
    """Write validated members under ``dest`` in archive order: files created exclusively and never
    through a link, modes fixed (0644 files, 0755 directories)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for name, m in members:
        path = os.path.join(dest, *name.split("/"))
        parent = os.path.dirname(path)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if m.isdir():
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif m.issym():
            os.symlink(m.linkname, path)
        else:
            src = tf.extractfile(m)
            if src is None:
                raise CaptureError(f"member {name[:80]!r} has no data")
            fd = os.open(path, flags, 0o644)
            with os.fdopen(fd, "wb") as f:
                left = m.size
                while left > 0:
                    chunk = src.read(min(left, 1 << 16))
                    if not chunk:
                        raise CaptureError(f"member {name[:80]!r} is truncated")
                    f.write(chunk)
                    left -= len(chunk)


def _find_root(dest: str) -> str:
    """The extracted tree's root: ``dest`` itself, or its single top folder (hwloc-gather-topology
    tarballs) when that holds ``sys``."""
    if os.path.isdir(os.path.join(dest, "sys")):
        return dest
    tops = [e for e in os.listdir(dest) if e != MANIFEST]
    if len(tops) == 1:
        top = os.path.join(dest, tops[0])
        if os.path.isdir(top) and not os.path.islink(top) and os.path.isdir(os.path.join(top, "sys")):
            return top
    raise CaptureError("no sys/ tree in the archive")


def _read_manifest(dest: str, root: str) -> dict[str, Any] | None:
    for base in (dest, root):
        path = os.path.join(base, MANIFEST)
        if os.path.isfile(path) and not os.path.islink(path):
            try:
                with open(path, "rb") as f:
                    doc = json.loads(f.read(MAX_MEMBER_SIZE).decode("utf-8"))
            except (OSError, ValueError) as exc:
                raise CaptureError(f"manifest {MANIFEST} is not JSON ({_one_line(exc)})") from None
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise CaptureError(f"manifest {MANIFEST} is not a {SCHEMA} document")
            return doc
    return None


def _manifest_notes(manifest: dict[str, Any]) -> list[str]:
    """The capture's own account of what it could not read, as topology warnings."""
    notes: list[str] = []
    who = f"capture of {manifest.get('hostname', '?')} (uid {manifest.get('euid', '?')})"
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


def _config_sizes(manifest: dict[str, Any] | None) -> dict[str, int] | None:
    """cfg_size per function, only from a live capture (a copied tree's file sizes say nothing)."""
    if not manifest or manifest.get("live") is not True:
        return None
    sizes = manifest.get("config_sizes")
    if not isinstance(sizes, dict):
        return None
    return {str(k): v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)}


def machine_name(path: str | os.PathLike[str]) -> str:
    """A machine's name from its capture's file name (suffix dropped)."""
    base = os.path.basename(str(path))
    low = base.lower()
    for suffix in (*ARCHIVE_SUFFIXES, ".xml"):
        if low.endswith(suffix):
            return base[: -len(suffix)] or base
    return base


def load_capture(
    path: str | os.PathLike[str],
    *,
    data: bytes | None = None,
    name: str | None = None,
    tmpdir: str | None = None,
) -> Topology:
    """Read a capture archive (or any tar of a sysfs/procfs root) into a Topology.

    ``data`` gives the archive's bytes instead of reading ``path`` (a remote worker); ``tmpdir``
    where the private temporary directory goes (default: tempfile's). Hostile archives are refused
    with a one-line SourceError before anything is written; the private directory is always removed.
    """
    import dataclasses

    from p2pdma.errors import SourceError
    from p2pdma.sources.sysfs import read_root

    where = str(path)
    label = name or machine_name(path)
    dest: str | None = None
    try:
        if data is not None:
            if len(data) > MAX_ARCHIVE_SIZE:
                raise CaptureError(f"archive is larger than {MAX_ARCHIVE_SIZE} bytes")
            raw: IO[bytes] = io.BytesIO(data)
        else:
            try:
                st = os.stat(where)
            except OSError as exc:
                raise SourceError(f"{where}: {exc.strerror or exc}", exc.errno) from None
            if not stat.S_ISREG(st.st_mode):
                raise CaptureError("not a regular file")
            if st.st_size > MAX_ARCHIVE_SIZE:
                raise CaptureError(f"archive is larger than {MAX_ARCHIVE_SIZE} bytes")
            raw = open(where, "rb")
        try:
            stream = _open_stream(raw)
            try:
                tf = tarfile.open(fileobj=stream, mode="r:")
            except CaptureError:
                raise
            except _ARCHIVE_ERRORS as exc:
                raise CaptureError(f"not a readable tar archive ({_one_line(exc)})") from None
            with tf:
                members = validate_members(tf)
                dest = tempfile.mkdtemp(prefix="p2pdma-capture-", dir=tmpdir)
                try:
                    _extract(tf, members, dest)
                except _ARCHIVE_ERRORS as exc:
                    raise CaptureError(f"cannot unpack ({_one_line(exc)})") from None
        finally:
            raw.close()
        root = _find_root(dest)
        manifest = _read_manifest(dest, root)
        try:
            topo = read_root(root, name=label, config_sizes=_config_sizes(manifest))
        except SourceError as exc:  # name the archive, not the removed temporary directory
            raise SourceError(f"{where}: {str(exc).replace(root, '')}", exc.errno) from None
        notes = _manifest_notes(manifest) if manifest else []
        if os.path.isfile(os.path.join(root, HMAT)):
            notes.append("capture holds the ACPI HMAT table; its P2P paths are not decoded (no HMAT parser)")
        return dataclasses.replace(topo, warnings=(*topo.warnings, *notes), source=f"capture:{where}")
    except CaptureError as exc:
        raise SourceError(f"{where}: refused: {exc}") from None
    finally:
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
