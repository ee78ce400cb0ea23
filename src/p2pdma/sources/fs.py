"""One read-only view of a machine's root, live or archived, that every sysfs/procfs reader goes through.

``LiveFs`` reads a directory with plain ``os`` calls (string paths, no pathlib in the hot loops);
``ArchiveFs`` holds an archive's members in memory, indexed once (see ``sources.archive``): files
are spans of the decompressed stream, sliced only when read. Both resolve links chroot-style: an
absolute target restarts at the root, ``..`` above the root or more than 40 links on one path is an
escape (``LinkEscape``). Resolution is linear in the path's length.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

MAX_LINK_HOPS = 40  # the kernel's MAXSYMLINKS
MAX_LOOKUP = 4096  # longer root-relative paths cannot name an entry (PATH_MAX): never looked up
MAX_READ = 1 << 20


class LinkEscape(Exception):
    """A path or link resolves to a place outside the root (or loops)."""


class NotRegular(OSError):
    """The path names something other than a regular file (FIFO, device, directory, socket)."""


def split(rel: str) -> list[str]:
    """The components of a root-relative path (empty and ``.`` parts dropped)."""
    return [p for p in rel.split("/") if p and p != "."]


def resolve(
    rel: str,
    readlink: Callable[[str], str | None],
    start: list[str] | None = None,
    known: dict[str, str] | None = None,
) -> str:
    """Resolve ``rel`` (below ``start``, a resolved list of components) following links chroot-style.

    ``readlink(path)`` gives a root-relative entry's link target, or None when it is not a link;
    ``known`` maps links to their already resolved targets. Each component is looked at once and a
    lookup joins at most MAX_LOOKUP characters, so a 2 MB link target costs linear time.
    """
    stack = split(rel)
    stack.reverse()
    done = list(start) if start else []
    length = sum(len(p) + 1 for p in done)
    hops = 0
    while stack:
        part = stack.pop()
        if part == "..":
            if not done:
                raise LinkEscape(rel[:200])
            length -= len(done.pop()) + 1
            continue
        if part == ".":
            continue
        if length + len(part) < MAX_LOOKUP:
            cand = "/".join(done) + "/" + part if done else part
            target = readlink(cand)
            if target is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise LinkEscape(rel[:200])
                if known is not None and cand in known:
                    done = split(known[cand])
                    length = sum(len(p) + 1 for p in done)
                    continue
                if target.startswith("/"):
                    done = []
                    length = 0
                more = split(target)
                more.reverse()
                stack.extend(more)
                continue
        done.append(part)
        length += len(part) + 1
    return "/".join(done)


class FsView:
    """The operations a reader needs on a root; paths are root-relative strings ('' is the root)."""

    label: str = ""
    live: bool = False

    def readlink(self, real: str) -> str | None:
        """The link target of the entry at ``real`` (its parents already resolved), None if not a link."""
        raise NotImplementedError

    def resolve(self, rel: str) -> str:
        """``rel`` with every link resolved inside the root; LinkEscape when it leaves it."""
        return resolve(rel, self.readlink)

    def resolve_dir(self, rel: str) -> str:
        """Like resolve(), memoised: for directories read many times over."""
        return self.resolve(rel)

    def read(self, rel: str, limit: int = MAX_READ) -> bytes:
        """At most ``limit`` bytes of the regular file at ``rel``; FileNotFoundError, NotRegular,
        LinkEscape or another OSError otherwise."""
        raise NotImplementedError

    def listdir(self, rel: str) -> list[str]:
        """The sorted entry names of the directory at ``rel`` (links followed)."""
        raise NotImplementedError

    def kind(self, real: str) -> str | None:
        """``f`` file, ``d`` directory, ``l`` link, ``o`` other, None absent: the entry at ``real`` itself."""
        raise NotImplementedError

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` leads to a directory inside the root."""
        try:
            return self.kind(self.resolve(rel)) == "d"
        except LinkEscape:
            return False

    def is_link(self, rel: str) -> bool:
        """Whether the last component of ``rel`` is a link (its parents resolved)."""
        head, _, tail = rel.rpartition("/")
        try:
            parent = self.resolve_dir(head)
        except LinkEscape:
            return False
        return self.readlink(f"{parent}/{tail}" if parent else tail) is not None

    def file_size(self, rel: str) -> int | None:
        """The size the entry reports (the kernel's cfg_size for a live ``config``), None when unknown."""
        return None

    def link_name(self, rel: str) -> str | None:
        """The last component of the target of the link at ``rel``, not followed (``driver`` -> ``nvme``)."""
        head, _, tail = rel.rpartition("/")
        try:
            parent = self.resolve_dir(head)
        except LinkEscape:
            return None
        target = self.readlink(f"{parent}/{tail}" if parent else tail)
        if target is None:
            return None
        parts = split(target)
        return parts[-1] if parts else None


class LiveFs(FsView):
    """A directory on this machine (``/`` or an unpacked copy of one), read with os calls."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.base = "" if self.root == "/" else self.root
        self.label = self.root
        self.live = self.root == "/"
        self._dirs: dict[str, str] = {}

    def _abs(self, real: str) -> str:
        return f"{self.base}/{real}" if real else (self.base or "/")

    def readlink(self, real: str) -> str | None:
        try:
            return os.readlink(self._abs(real))
        except OSError:
            return None

    def resolve_dir(self, rel: str) -> str:
        hit = self._dirs.get(rel)
        if hit is None:
            head, _, tail = rel.rpartition("/")
            if head and tail and tail not in (".", ".."):
                hit = resolve(tail, self.readlink, split(self.resolve_dir(head)))
            else:
                hit = resolve(rel, self.readlink)
            self._dirs[rel] = hit
        return hit

    def resolve(self, rel: str) -> str:
        head, _, tail = rel.rpartition("/")
        if not head or tail in ("", ".", ".."):
            return resolve(rel, self.readlink)
        return resolve(tail, self.readlink, split(self.resolve_dir(head)))

    def open_regular(self, rel: str) -> tuple[int, int]:
        """(file descriptor, st_size) of ``rel`` opened read-only, links resolved inside the root, without
        blocking; NotRegular (the descriptor closed) when it is not a regular file."""
        head, _, tail = rel.rpartition("/")
        parent = self.resolve_dir(head) if head else ""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        path = self._abs(f"{parent}/{tail}" if parent else tail)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            fd = os.open(self._abs(self.resolve(rel)), flags)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotRegular(errno.EINVAL, "not a regular file")
        return fd, st.st_size

    def read(self, rel: str, limit: int = MAX_READ) -> bytes:
        fd, _ = self.open_regular(rel)
        try:
            chunks = []
            left = limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def listdir(self, rel: str) -> list[str]:
        return sorted(os.listdir(self._abs(self.resolve_dir(rel))))

    def kind(self, real: str) -> str | None:
        try:
            mode = os.lstat(self._abs(real)).st_mode
        except OSError:
            return None
        if stat.S_ISREG(mode):
            return "f"
        if stat.S_ISDIR(mode):
            return "d"
        if stat.S_ISLNK(mode):
            return "l"
        return "o"

    def file_size(self, rel: str) -> int | None:
        try:
            return os.stat(self._abs(self.resolve(rel))).st_size
        except (OSError, LinkEscape):
            return None


class ArchiveFs(FsView):
    """An archive's members held in memory: files (spans of the decompressed tar stream ``data``),
    links (targets) and directories (entry names).

    Built by ``sources.archive.open_archive()`` after validation; nothing is ever written to disk and
    no file's bytes are copied until it is read.
    """

    def __init__(
        self,
        data: bytes,
        files: dict[str, tuple[int, int]],
        links: dict[str, str],
        dirs: dict[str, list[str]],
        *,
        label: str = "",
        resolved: dict[str, str] | None = None,
    ) -> None:
        self.data = data
        self.files = files
        self.links = links
        self.dirs = dirs
        self.label = label
        self.resolved = resolved if resolved is not None else {}
        self._dirs: dict[str, str] = {}

    def content(self, real: str, limit: int = MAX_READ) -> bytes | None:
        """At most ``limit`` bytes of the regular file at ``real`` (no link followed), None if none."""
        span = self.files.get(real)
        if span is None:
            return None
        at, size = span
        return self.data[at : at + min(size, limit)]

    def readlink(self, real: str) -> str | None:
        return self.links.get(real)

    def resolve(self, rel: str) -> str:
        # A member's name is its own real path: the index holds normalised names only and refuses
        # members below a file or link, so every prefix of a file or directory is a directory.
        if rel in self.files or rel in self.dirs:
            return rel
        # Components resolve left to right, so ``head/tail`` is resolve_dir(head) (memoised) plus
        # ``tail`` when that is a plain name and no link: the same answer, one lookup per read.
        head, _, tail = rel.rpartition("/")
        if head and tail and tail != "." and tail != ".." and len(rel) < MAX_LOOKUP:
            base = self.resolve_dir(head)
            cand = f"{base}/{tail}" if base else tail
            if cand not in self.links and len(cand) < MAX_LOOKUP:
                return cand
            known = self.resolved.get(cand)
            if known is not None and head in self.dirs:
                return known  # a link in a real directory: its target resolved once, one hop
        return resolve(rel, self.links.get, None, self.resolved)

    def resolve_dir(self, rel: str) -> str:
        hit = self._dirs.get(rel)
        if hit is None:
            hit = self._dirs[rel] = self.resolve(rel)
        return hit

    def read(self, rel: str, limit: int = MAX_READ) -> bytes:
        span = self.files.get(rel)  # a member's own name: no link on the way (see resolve())
        if span is not None:
            at, size = span
            return self.data[at : at + min(size, limit)]
        real = self.resolve(rel)
        span = self.files.get(real)
        if span is None:
            if real in self.dirs:
                raise NotRegular(errno.EISDIR, "is a directory")
            raise FileNotFoundError(errno.ENOENT, "missing")
        at, size = span
        return self.data[at : at + min(size, limit)]

    def listdir(self, rel: str) -> list[str]:
        real = self.resolve(rel)
        entries = self.dirs.get(real)
        if entries is None:
            if real in self.files:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            raise FileNotFoundError(errno.ENOENT, "missing")
        return sorted(entries)

    def kind(self, real: str) -> str | None:
        if real in self.files:
            return "f"
        if real in self.links:
            return "l"
        if real in self.dirs or real == "":
            return "d"
        return None

    def file_size(self, rel: str) -> int | None:
        return None


def view(root: str | os.PathLike[str] | FsView) -> FsView:
    """The view of ``root``: an FsView as it is, a directory as a LiveFs."""
    if isinstance(root, FsView):
        return root
    return LiveFs(os.fspath(root))


__all__ = ["ArchiveFs", "FsView", "LinkEscape", "LiveFs", "NotRegular", "resolve", "split", "view"]
