"""Reading the small input files users name (dumps, XML): regular files only, size-capped, one-line
errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pdma.errors import SourceError


def read_capped(path: str | os.PathLike[str], limit: int) -> tuple[bytes, str]:
    """Read a regular file of at most ``limit`` bytes; returns (data, name without .xml).
    SourceError with one line for anything else."""
    p = Path(path)
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            raise SourceError(f"{p}: not a regular file")
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SourceError(f"{p}: {exc.strerror or exc}", exc.errno) from None
    if len(data) > limit:
        raise SourceError(f"{p}: larger than {limit} bytes")
    return data, (p.name[:-4] if p.name.lower().endswith(".xml") else p.name)
