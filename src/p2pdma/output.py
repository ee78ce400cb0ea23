"""Writing the files a user names: never replace one without force, ``-`` for stdout where the caller
allows it, write to a temporary name beside the target, fsync, rename; on any failure nothing is
left behind and the user's path is never unlinked. Errors are one-line P2pdmaErrors with the errno.

A character device the user names explicitly (/dev/stdout, /dev/null) is written in place: there is
nothing to rename over, and a write error there (/dev/full: ENOSPC) is reported all the same.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from p2pdma.errors import P2pdmaError
from p2pdma.sources.files import shown


class OutputError(P2pdmaError):
    """The output could not be written (exists, no space, no permission): the CLI exits 2."""

    default_errno = errno.EIO


def _err(path: str, what: str, exc: OSError | None = None) -> OutputError:
    why = f" ({exc.strerror or exc})" if exc is not None else ""
    return OutputError(f"{shown(path)}: {what}{why}", (exc.errno if exc is not None else None) or errno.EIO)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_output(path: str | os.PathLike[str], data: bytes | str, *, force: bool = False,
                 stdout: BinaryIO | None = None) -> str:
    """Write ``data`` to ``path`` atomically; returns where it went (the path, or ``-``).

    ``-`` writes to ``stdout`` (the CLI passes sys.stdout.buffer where ``-`` makes sense; without it
    ``-`` is refused, never a file named ``-``); an existing regular file is refused (EEXIST)
    unless ``force``; a directory, FIFO or socket is refused; a character device is written in place."""
    p = os.fspath(path)
    payload = data.encode() if isinstance(data, str) else data
    if p == "":
        raise OutputError("empty output path: name a file (or - for stdout)", errno.ENOENT)
    if "\0" in p:
        raise OutputError(f"{shown(p)}: a path may not contain a NUL byte", errno.EINVAL)
    if p == "-":
        if stdout is None:
            raise OutputError("-: this output cannot go to stdout; name a file", errno.EINVAL)
        out = stdout
        try:
            out.write(payload)
            out.flush()
        except OSError as exc:
            raise _err("-", "cannot write to stdout", exc) from None
        return "-"
    try:
        st: os.stat_result | None = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _err(p, "cannot write", exc) from None
    if st is not None:
        if stat.S_ISCHR(st.st_mode):
            return _write_device(p, payload)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OutputError(f"{shown(p)}: {kind}, not written", errno.EISDIR if stat.S_ISDIR(st.st_mode)
                              else errno.EINVAL)
        if not force:
            raise OutputError(f"{shown(p)}: exists; not replaced (force to replace it)", errno.EEXIST)
    _write_atomic(p, payload, st)
    return p


def _write_device(p: str, payload: bytes) -> str:
    try:
        fd = os.open(p, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _err(p, "cannot write", exc) from None
    try:
        _write_all(fd, payload)
    except BlockingIOError as exc:
        raise _err(p, "would block", exc) from None
    except OSError as exc:
        raise _err(p, "write failed", exc) from None
    finally:
        os.close(fd)
    return p


def _link_new(tmp: str, p: str) -> None:
    """Give ``tmp`` the name ``p`` unless ``p`` exists by now (EEXIST); renames where links are not allowed."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise
    except OSError:
        os.replace(tmp, p)
        return
    os.unlink(tmp)


def _write_atomic(p: str, payload: bytes, old: os.stat_result | None) -> None:
    directory, base = os.path.split(p)
    directory = directory or "."
    tmp = os.path.join(directory, f".{base[:200]}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise _err(p, "cannot write", exc) from None
    done = False
    try:
        try:
            if old is not None:
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        if old is None:
            _link_new(tmp, p)  # the name was free: take it only if it still is
        else:
            os.replace(tmp, p)
        done = True
    except FileExistsError:
        raise OutputError(f"{shown(p)}: appeared while writing; not replaced", errno.EEXIST) from None
    except OSError as exc:
        raise _err(p, "write failed, nothing was changed", exc) from None
    finally:
        if not done:
            try:
                os.unlink(tmp)  # only our own temporary name, never the user's path
            except OSError:
                pass
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # the data is written and renamed; a directory fsync is best effort
