"""The reading layer refuses what is not a regular file without blocking, caps sizes, names bad bytes."""

from __future__ import annotations

import errno
import os
import random
import resource
import time
from pathlib import Path

import pytest

from p2pdma.errors import SourceError
from p2pdma.sources import files, safeload
from p2pdma.sources.spec import load_spec


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.mark.usefixtures("guard")
@pytest.mark.parametrize("reader", ["bytes", "text", "spec", "yaml", "json"])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, reader: str) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    calls = {
        "bytes": lambda: files.read_bytes(fifo, kind="sysfs"),
        "text": lambda: files.read_text(fifo, kind="proc"),
        "spec": lambda: load_spec(fifo),
        "yaml": lambda: safeload.load_yaml(fifo),
        "json": lambda: safeload.load_json(fifo),
    }
    t0 = time.monotonic()
    with pytest.raises(SourceError) as ei:
        calls[reader]()
    assert time.monotonic() - t0 < 2
    assert "a FIFO, not a regular file" in one_line(ei.value) and ei.value.errno == errno.EINVAL


@pytest.mark.usefixtures("guard")
@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device"),
                                            ("/", "a directory")])
def test_devices_and_directories_are_refused(path: str, kind: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SourceError, match=kind):
        load_spec(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: nothing read


def test_each_kind_has_a_cap_and_larger_files_are_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(2 << 30)  # a sparse 2 GiB file
    for kind in ("sysfs", "spec", "model", "scenario"):
        with pytest.raises(SourceError, match=f"more than the {files.LIMITS[kind]} bytes allowed") as ei:
            files.read_bytes(big, kind=kind)
        assert ei.value.errno == errno.EFBIG
    small = tmp_path / "small"
    small.write_bytes(b"x" * 100)
    assert files.read_bytes(small, limit=100) == b"x" * 100
    with pytest.raises(SourceError, match="more than the 99 bytes"):
        files.read_bytes(small, limit=99)


def test_undecodable_bytes_are_named(tmp_path: Path) -> None:
    p = tmp_path / "spec.yaml"
    p.write_bytes(b"name: caf\xc3\xa9\nx: \xff\n")
    with pytest.raises(SourceError, match=r"not utf-8 text \(byte 0xff at offset 15\)") as ei:
        files.read_text(p)
    assert ei.value.errno == errno.EILSEQ


@pytest.mark.parametrize("seed", range(4))
def test_long_paths_give_one_line(tmp_path: Path, seed: int) -> None:
    r = random.Random(seed)
    long_component = "c" * r.randint(256, 400)
    huge = "/".join("d" * r.randint(1, 255) for _ in range(400))[:100_000]
    for p in (str(tmp_path / long_component), huge, "x" * 100_000, str(tmp_path / "a\nb")):
        with pytest.raises(SourceError) as ei:
            files.read_text(p)
        line = one_line(ei.value)
        assert "cannot read" in line and len(line) < files.SHOWN_PATH + 100


def test_empty_path_and_nul_are_refused() -> None:
    with pytest.raises(SourceError, match="empty path"):
        files.read_bytes("")
    with pytest.raises(SourceError, match="NUL byte"):
        files.read_bytes("a\0b")
