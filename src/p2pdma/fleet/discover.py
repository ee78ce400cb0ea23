"""Which files of a directory or a glob are fleet members (capture archives and hwloc XML files)."""

from __future__ import annotations

import glob
import os

from p2pdma.errors import InputError
from p2pdma.fleet.engines import Task

FLEET_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".xml")


def _machine_name(path: str) -> str:
    from p2pdma.sources.capture import machine_name

    return machine_name(path)


def find_tasks(spec: str) -> list[Task]:
    """The machines named by a directory (its capture and hwloc XML files, not recursing) or a glob
    (every regular file it matches), sorted by path."""
    if os.path.isdir(spec):
        paths = [
            os.path.join(spec, e)
            for e in os.listdir(spec)
            if e.lower().endswith(FLEET_SUFFIXES) and os.path.isfile(os.path.join(spec, e))
        ]
    else:
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    if not paths:
        raise InputError(f"{spec}: no captures (.tar.gz, .tgz, .tar, .tar.bz2, .tar.xz, .xml) found")
    return [Task(_machine_name(p), p) for p in sorted(paths)]


__all__ = ["FLEET_SUFFIXES", "find_tasks"]
