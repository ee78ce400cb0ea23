"""Capture the sysfs/procfs files the P2P verdict, the fix and the report read into one archive.

This file is the stand-alone writer: it imports only the standard library (nothing of p2pdma, no
numpy, no YAML), and runs on its own on any Linux host with Python 3.7 or newer:
``python3 capture.py OUT.tar.gz [--root /]`` (tested with CPython 3.7.16).

It writes what ``sources.sysfs.read_root()`` reads, nothing else: every PCI function directory below
``sys/devices/pci*`` (config, ids, class, resource, NUMA node, local CPU list, link speed/width, the
``iommu_group``/``driver``/``physfn`` links, the OS names under ``net/``, ``infiniband/``, ``nvme/``,
``drm/``, the ``p2pmem/`` attributes), the ``sys/bus/pci/devices`` links, the first processor of
cpuinfo, the kernel release, ``sys/class/iommu``, the IOMMU groups' ``type`` files, the DMI fields
anyone may read, and the ACPI HMAT table when readable. Links are kept as links and never followed
out of the root. The manifest (``p2pdma-capture.json``, schema ``p2pdma.capture/2``) says, fact by
fact, what was captured and what was not and why (absent, not root, unreadable), plus the kernel's
``config`` file sizes (cfg_size) so the loader can tell an absent ACS capability from an unreadable
one. The output is written to a temporary name beside OUT and renamed: on failure nothing is left.

Loading archives lives in ``sources.archive`` (in memory, never extracted); ``load_capture``,
``is_archive`` and ``machine_name`` are re-exported here lazily for old callers.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import posixpath
import re
import stat
import sys
import tarfile
import tempfile
import time
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

if TYPE_CHECKING:
    from collections.abc import Sequence

    from p2pdma.sources.archive import is_archive as is_archive
    from p2pdma.sources.archive import load_capture as load_capture
    from p2pdma.sources.archive import machine_name as machine_name

SCHEMA = "p2pdma.capture/2"
CAPTURE_VERSION = 2
MANIFEST = "p2pdma-capture.json"
PCI_DEVICES = "sys/bus/pci/devices"
SYS_DEVICES = "sys/devices"
# Per function: the files read_root() opens and the links whose names it reads (not followed).
DEVICE_FILES = (
    "config",
    "vendor",
    "device",
    "class",
    "resource",
    "numa_node",
    "local_cpulist",
    "max_link_speed",
    "max_link_width",
    "current_link_speed",
    "current_link_width",
)
DEVICE_LINKS = ("iommu_group", "driver", "physfn")
OS_NAME_DIRS = ("net", "infiniband", "nvme", "drm")
P2PMEM_FILES = ("size", "available", "published")
CPUINFO = "proc/cpuinfo"
OSRELEASE = "proc/sys/kernel/osrelease"
HMAT = "sys/firmware/acpi/tables/HMAT"
IOMMU_CLASS = "sys/class/iommu"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
DMI_ID = "sys/class/dmi/id"
DMI_FIELDS = (
    "sys_vendor", "product_name", "product_version", "product_family", "board_vendor", "board_name",
    "board_version", "bios_vendor", "bios_version", "bios_date", "chassis_vendor", "chassis_type",
)
CONFIG_MAX = 4096  # PCI_CFG_SPACE_EXP_SIZE
PCI_CFG_SPACE_SIZE_UNPRIV = 64  # what the kernel lets a non-root reader see of config space
MAX_LINK_HOPS = 40
MAX_LOOKUP = 4096

BDF = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
HOST_BRIDGE = re.compile(r"^pci[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}$")
DRM_NAME = re.compile(r"^(card|renderD)[0-9]+$")
NVME_NS = re.compile(r"^nvme[0-9]+(c[0-9]+)?n[0-9]+$")

# Capture bounds: the archive never grows past these, whatever the host.
CAPTURE_MAX_FILE = 1 << 20
CAPTURE_MAX_FUNCTIONS = 16384
CAPTURE_MAX_GROUPS = 65536
CAPTURE_MAX_BYTES = 64 << 20

_LOADER_NAMES = ("load_capture", "is_archive", "machine_name")


def __getattr__(name: str) -> Any:
    """Old callers' names for the loader, which now lives in sources.archive (imported on use)."""
    if name in _LOADER_NAMES:
        from p2pdma.sources import archive

        return getattr(archive, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CaptureError(Exception):
    """A capture could not be written; the message is one line."""


class _Escape(Exception):
    """A path or link resolves to a place outside the root."""


# --------------------------------------------------------------------------------------------
# Resolving links inside the root (the rules of sources.fs.resolve(), written again here so that
# this file needs nothing but the standard library; a test checks that both agree)
# --------------------------------------------------------------------------------------------


def _split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p and p != "."]


def _resolve(rel: str, readlink: Callable[[str], str | None]) -> str:
    """Follow links chroot-style, asking ``readlink(root-relative path)`` for a link's target (None:
    not a link). An absolute target restarts at the root; ``..`` above the root or more than 40 links
    raises _Escape. Linear in the path's length."""
    stack = _split(rel)
    stack.reverse()
    done: list[str] = []
    length = 0
    hops = 0
    while stack:
        part = stack.pop()
        if part == "..":
            if not done:
                raise _Escape(rel[:200])
            length -= len(done.pop()) + 1
            continue
        if length + len(part) < MAX_LOOKUP:
            cand = "/".join(done) + "/" + part if done else part
            target = readlink(cand)
            if target is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _Escape(rel[:200])
                if target.startswith("/"):
                    done = []
                    length = 0
                more = _split(target)
                more.reverse()
                stack.extend(more)
                continue
        done.append(part)
        length += len(part) + 1
    return "/".join(done)


def resolve_chroot(root: str, rel: str) -> str:
    """Resolve ``rel`` inside the directory ``root`` as if ``root`` were ``/``."""

    def readlink(path: str) -> str | None:
        try:
            return os.readlink(os.path.join(root, path))
        except OSError:
            return None

    return _resolve(rel, readlink)


def _relative_link(link_rel: str, target_rel: str) -> str:
    """A relative link text leading from the link at ``link_rel`` to ``target_rel`` (both root-relative)."""
    return posixpath.relpath(target_rel or ".", posixpath.dirname(link_rel) or ".")


def _first_cpu(text: bytes) -> bytes:
    """The first processor's block of /proc/cpuinfo: all parse_cpuinfo() reads."""
    out: list[bytes] = []
    for line in text.split(b"\n"):
        if not line.strip():
            if out:
                break
            continue
        out.append(line)
    return b"\n".join(out) + b"\n\n" if out else b""


def _why(exc: OSError) -> str:
    """Why a file could not be read, in the manifest's words."""
    if exc.errno == errno.ENOENT:
        return "absent"
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        return "not root"
    return f"unreadable ({exc.strerror or exc})"


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

    def note(self, rel: str, reason: str) -> None:
        self.unreadable.append({"path": rel, "reason": reason})

    def _add_dirs(self, rel: str) -> None:
        parts = _split(rel)
        for i in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:i]))

    def _account(self, n: int) -> None:
        self.size += n + 512
        if self.size > self.max_bytes:
            raise CaptureError(f"capture would exceed {self.max_bytes} bytes; refusing to write more")

    def read(self, rel: str, limit: int = CAPTURE_MAX_FILE) -> bytes:
        """The regular file at ``rel`` (links resolved inside the root), recorded in the archive;
        OSError (errno ENOENT, EACCES, ...) or _Escape otherwise. Never blocks on a FIFO."""
        real = resolve_chroot(self.root, rel)
        path = os.path.join(self.root, real)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            chunks = []
            left = limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
        if real != rel:
            self._add_link_chain(rel)
        self._add_dirs(posixpath.dirname(real))
        self._account(len(data))
        self.files[real] = data
        return data

    def add_file(self, rel: str, limit: int = CAPTURE_MAX_FILE, *, required: bool = True) -> bytes | None:
        """read(), noting in the manifest why a file could not be read (absence only if ``required``)."""
        try:
            return self.read(rel, limit)
        except _Escape:
            self.note(rel, "link leads outside the root, not followed")
        except OSError as exc:
            why = _why(exc)
            if why != "absent" or required:
                self.note(rel, why)
        return None

    def _add_link_chain(self, rel: str) -> None:
        """Record the links met while resolving ``rel`` (so the archive resolves the same way)."""
        parts = _split(rel)
        parts.reverse()
        done: list[str] = []
        hops = 0
        while parts and hops <= MAX_LINK_HOPS:
            part = parts.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join(done + [part])
            try:
                target = os.readlink(os.path.join(self.root, cand))
            except OSError:
                done.append(part)
                continue
            hops += 1
            self.add_link(cand)
            if target.startswith("/"):
                done = []
            more = _split(target)
            more.reverse()
            parts.extend(more)

    def add_dir(self, rel: str) -> None:
        """Record the directory at ``rel`` (its parents resolved), empty: only its name is read."""
        real = resolve_chroot(self.root, rel)
        if real != rel:
            self._add_link_chain(rel)
        self._add_dirs(real)
        self._account(0)

    def add_link(self, rel: str, *, required: bool = False) -> str | None:
        """Record the link at ``rel`` as a link, not followed; an absolute target becomes the
        relative one it means inside the root, a target climbing out of the root is skipped."""
        path = os.path.join(self.root, rel)
        try:
            target = os.readlink(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                if required:
                    self.note(rel, "absent")
            elif os.path.lexists(path) and exc.errno != errno.EINVAL:
                self.note(rel, _why(exc))
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
        """Drop links that the loader's check (through the archive's own links) would see leave the
        root, and directories recorded where a link now stands: the archive must always load."""
        changed = True
        while changed:
            changed = False
            for name in sorted(self.links):
                target = self.links[name]
                try:
                    _resolve(posixpath.join(posixpath.dirname(name), target), self.links.get)
                except _Escape:
                    del self.links[name]
                    self.skipped_links.append({"path": name, "target": target, "reason": "leads outside the root"})
                    changed = True
        self.dirs -= set(self.links)

    def write(self, out: str, manifest: dict[str, Any], stream: IO[bytes] | None = None) -> int:
        """Write the members (directories first, then files and links, each sorted) to ``stream``, or
        to a temporary file beside ``out`` renamed to ``out``; nothing is left behind on failure."""
        blob = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        buf = io.BytesIO()
        mode = _compression_of(out)
        raw: IO[bytes] = buf
        if mode == "gz":
            raw = cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0))
        elif mode == "bz2" and bz2 is not None:
            raw = cast(IO[bytes], bz2.BZ2File(buf, "wb"))
        elif mode == "xz" and lzma is not None:
            raw = cast(IO[bytes], lzma.LZMAFile(buf, "wb"))
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
        if stream is not None:
            try:
                stream.write(data)
                stream.flush()
            except OSError as exc:
                raise CaptureError(f"{out}: cannot write ({exc.strerror or exc})") from None
            return len(data)
        where = os.path.dirname(os.path.abspath(out))
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".part", dir=where)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
            tmp = None
        except OSError as exc:
            raise CaptureError(f"{out}: cannot write ({exc.strerror or exc})") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
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


def _listdir(root: str, rel: str) -> list[str] | None:
    try:
        return sorted(os.listdir(os.path.join(root, resolve_chroot(root, rel))))
    except (OSError, _Escape):
        return None


def _walk_functions(root: str) -> dict[str, list[str]]:
    """Every PCI function directory below sys/devices/pci* (real directories named by BDF, links
    not followed), as read_root() walks them: {root-relative directory: its entries}."""
    out: dict[str, list[str]] = {}
    try:
        top = resolve_chroot(root, SYS_DEVICES)
    except _Escape:
        return out
    for hb in _listdir(root, top) or []:
        start = top + "/" + hb
        if not HOST_BRIDGE.match(hb) or not _is_real_dir(root, start):
            continue
        stack = [start]
        while stack:
            cur = stack.pop()
            try:
                entries = sorted(os.listdir(os.path.join(root, cur)))
            except OSError:
                entries = []
            if cur != start and BDF.match(cur.rpartition("/")[2]):
                out[cur] = entries
            kids = [cur + "/" + e for e in entries if BDF.match(e) or (cur != start and HOST_BRIDGE.match(e))]
            stack.extend(k for k in reversed(kids) if _is_real_dir(root, k))
    return out


def _is_real_dir(root: str, rel: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(root, rel)).st_mode)
    except OSError:
        return False


class _Facts:
    """Per fact: how many were captured, and why the others were not."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def count(self, fact: str, status: str) -> None:
        entry = self.data.setdefault(fact, {"captured": 0, "missing": {}})
        if status == "captured":
            entry["captured"] += 1
        else:
            entry["missing"][status] = entry["missing"].get(status, 0) + 1

    def result(self) -> dict[str, dict[str, Any]]:
        out = {}
        for fact, entry in sorted(self.data.items()):
            missing = entry["missing"]
            status = "captured" if not missing else "missing" if not entry["captured"] else "partial"
            out[fact] = {"status": status, "captured": entry["captured"], "missing": dict(sorted(missing.items()))}
        return out


def _read_fact(cap: _Capture, facts: _Facts, fact: str, rel: str, limit: int = CAPTURE_MAX_FILE) -> bytes | None:
    """Capture one file of a fact, counting it captured or why not."""
    try:
        data = cap.read(rel, limit)
    except _Escape:
        facts.count(fact, "link leads outside the root")
        return None
    except OSError as exc:
        why = _why(exc)
        facts.count(fact, why)
        if why != "absent":
            cap.note(rel, why)
        return None
    facts.count(fact, "captured")
    return data


def _capture_function(cap: _Capture, facts: _Facts, real: str, entries: list[str], entry: str,
                      config_sizes: dict[str, int]) -> None:
    root = cap.root
    cap._add_dirs(real)
    present = set(entries)
    for fname in DEVICE_FILES:
        limit = CONFIG_MAX if fname == "config" else CAPTURE_MAX_FILE
        if fname == "local_cpulist":
            _read_fact(cap, facts, "local_cpulist", real + "/" + fname)
            continue
        data = cap.add_file(real + "/" + fname, limit, required=fname in ("config", "vendor", "device"))
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
                cap.truncated.append({"path": real + "/" + fname, "read": len(data), "size": size, "reason": why})
    for lname in DEVICE_LINKS:
        text = cap.add_link(real + "/" + lname)
        if lname == "driver":
            facts.count("driver", "captured" if text is not None else "absent (no driver bound)")
    names = 0
    for sub in OS_NAME_DIRS:
        if sub not in present:
            continue
        for name in _listdir(root, real + "/" + sub) or []:
            if sub == "drm" and not DRM_NAME.match(name):
                continue
            cap.add_dir(real + "/" + sub + "/" + name)
            names += 1
            if sub == "nvme":
                for ns in _listdir(root, real + "/nvme/" + name) or []:
                    if NVME_NS.match(ns):
                        cap.add_dir(real + "/nvme/" + name + "/" + ns)
    facts.count("os_names", "captured" if names else "absent (no net, infiniband, nvme or drm device)")
    if "p2pmem" in present:
        for attr in P2PMEM_FILES:
            _read_fact(cap, facts, "p2pmem", real + "/p2pmem/" + attr)


def _capture_platform(cap: _Capture, facts: _Facts) -> None:
    """The machine-wide facts: cpuinfo, kernel release, HMAT, IOMMU units and group types, DMI."""
    root = cap.root
    cpuinfo = _read_fact(cap, facts, "cpuinfo", CPUINFO)
    if cpuinfo is not None:
        cap.files[resolve_chroot(root, CPUINFO)] = _first_cpu(cpuinfo)
    _read_fact(cap, facts, "kernel_release", OSRELEASE)
    _read_fact(cap, facts, "hmat", HMAT)
    units = _listdir(root, IOMMU_CLASS)
    if units is None:
        facts.count("iommu_class", "absent")
    else:
        cap.add_dir(IOMMU_CLASS)
        for u in units:
            if cap.add_link(IOMMU_CLASS + "/" + u) is None:
                cap.add_dir(IOMMU_CLASS + "/" + u)
        facts.count("iommu_class", "captured")
    groups = _listdir(root, IOMMU_GROUPS)
    if groups is None:
        facts.count("iommu_group_types", "absent")
    else:
        cap.add_dir(IOMMU_GROUPS)
        numbered = [g for g in groups if g.isdigit()]
        if len(numbered) > CAPTURE_MAX_GROUPS:
            n = len(numbered)
            raise CaptureError(f"{n} IOMMU groups: more than the capture bound {CAPTURE_MAX_GROUPS}")
        for g in numbered:
            _read_fact(cap, facts, "iommu_group_types", IOMMU_GROUPS + "/" + g + "/type", 256)
        if not numbered:
            facts.count("iommu_group_types", "absent (no groups)")
    if _listdir(root, DMI_ID) is None:
        facts.count("dmi", "absent")
    else:
        got = [f for f in DMI_FIELDS if _read_fact(cap, _Facts(), "dmi", DMI_ID + "/" + f, 4096) is not None]
        facts.count("dmi", "captured" if got else "unreadable")


def capture(
    out: str,
    root: str = "/",
    *,
    max_functions: int = CAPTURE_MAX_FUNCTIONS,
    max_bytes: int = CAPTURE_MAX_BYTES,
    force: bool = False,
    stream: IO[bytes] | None = None,
) -> dict[str, Any]:
    """Write the files the verdict reads under ``root`` into the archive ``out`` (or, given ``stream``,
    a gzip archive onto it); returns the manifest.

    Raises CaptureError (nothing written) when ``root`` has no PCI devices, the capture would exceed
    its bounds, or ``out`` exists (a regular file is replaced only with ``force``; anything else,
    a device node or a directory, never).
    """
    if stream is None:
        _check_out(out, force)
    root = os.path.abspath(root)
    live = root == "/"
    cap = _Capture(root, max_bytes)
    walked = _walk_functions(root)
    listed = _listdir(root, PCI_DEVICES)
    if listed is None and not walked:
        raise CaptureError(f"{os.path.join(root, PCI_DEVICES)}: cannot list PCI devices")
    if len(walked) > max_functions or len(listed or []) > max_functions:
        n = max(len(walked), len(listed or []))
        raise CaptureError(f"{n} PCI functions: more than the capture bound {max_functions}")
    config_sizes: dict[str, int] = {}
    facts = _Facts()
    done: dict[str, str] = {}
    for real, entries in sorted(walked.items(), key=lambda kv: kv[0].rpartition("/")[2]):
        bdf = real.rpartition("/")[2]
        if bdf in done:
            continue
        done[bdf] = real
        _capture_function(cap, facts, real, entries, bdf, config_sizes)
    if listed is not None:
        cap.add_dir(PCI_DEVICES)
    for entry in listed or []:
        rel = PCI_DEVICES + "/" + entry
        if os.path.islink(os.path.join(root, resolve_chroot(root, PCI_DEVICES), entry)):
            cap.add_link(rel)
        try:
            real = resolve_chroot(root, rel)
        except _Escape:
            cap.skipped_links.append({"path": rel, "target": "", "reason": "leads outside the root"})
            continue
        if done.get(entry) == real:
            continue
        if not os.path.isdir(os.path.join(root, real)):
            cap.note(rel, "does not lead to a device directory")
            continue
        try:
            entries = sorted(os.listdir(os.path.join(root, real)))
        except OSError:
            entries = []
        done.setdefault(entry, real)
        _capture_function(cap, facts, real, entries, entry, config_sizes)
    _capture_platform(cap, facts)
    cap.drop_escaping_links()
    uname = os.uname()
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "capture_version": CAPTURE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": uname.nodename if live else os.path.basename(root.rstrip("/")) or root,
        "source_root": root,
        "live": live,
        "euid": os.geteuid(),
        "python": sys.version.split()[0],
        "functions": len(done),
        "config_sizes": config_sizes,
        "facts": facts.result(),
        "unreadable": cap.unreadable,
        "truncated": cap.truncated,
        "skipped_links": cap.skipped_links,
        "limits": {"max_functions": max_functions, "max_bytes": max_bytes, "max_file": CAPTURE_MAX_FILE},
    }
    manifest["archive_bytes"] = cap.write(out, manifest, stream)
    return manifest


def _check_out(out: str, force: bool) -> None:
    """Refuse an output path that names something the user has: a file unless ``force``, anything
    that is not a regular file always (``os.replace`` would remove a device node or a link)."""
    if not out:
        raise CaptureError("the output path is empty")
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CaptureError(f"{out}: cannot write ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CaptureError(f"{out}: exists and is not a regular file; name a new file")
    if not force:
        raise CaptureError(f"{out}: exists; use --force to replace it")


def describe(manifest: dict[str, Any], out: str) -> list[str]:
    """The lines a capture prints: what it wrote, and what it could not read (and what that hides)."""
    lines = [f"captured {manifest['functions']} PCI functions into {out} ({manifest['archive_bytes']} bytes)"]
    trunc = manifest["truncated"]
    if trunc:
        lines.append(
            "could not read: config space of {} functions past {} bytes ({}): ACS is unknown for them".format(
                len(trunc), trunc[0]["read"], trunc[0]["reason"])
        )
    for fact, entry in sorted(manifest.get("facts", {}).items()):
        if entry["status"] == "missing" and fact not in ("hmat", "p2pmem"):
            why = ", ".join(sorted(entry["missing"]))
            lines.append(f"not captured: {fact} ({why})")
    for u in manifest["unreadable"][:8]:
        lines.append("could not read: {} ({})".format(u["path"], u["reason"]))
    if len(manifest["unreadable"]) > 8:
        lines.append("could not read: ... and {} more (see {})".format(len(manifest["unreadable"]) - 8, MANIFEST))
    for s in manifest["skipped_links"][:8]:
        lines.append("not followed: {} ({})".format(s["path"], s["reason"]))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python3 capture.py OUT.tar.gz|- [--root /] [--force]``; exit 2 on error."""
    import argparse

    p = argparse.ArgumentParser(prog="capture.py", description="Capture what the P2P verdict reads.")
    p.add_argument("out", metavar="OUT.tar.gz", help="archive to write (.tar.gz, .tar, .tar.bz2, .tar.xz)")
    p.add_argument("--root", "--source-root", dest="root", default="/", help="root to capture (default /)")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an existing file")
    args = p.parse_args(argv)
    try:
        if args.out == "-":  # the archive (gzip) to stdout
            manifest = capture(args.out, args.root, stream=sys.stdout.buffer)
        else:
            manifest = capture(args.out, args.root, force=args.force)
    except CaptureError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 2
    for line in describe(manifest, args.out):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
