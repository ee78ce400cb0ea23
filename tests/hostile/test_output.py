"""Output paths: no silent replacement, atomic writes, write errors as one line, nothing left behind,
the user's file never removed."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from p2pdma.errors import P2pdmaError
from p2pdma.output import write_output


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("mine")
    with pytest.raises(P2pdmaError, match="exists; not replaced") as ei:
        write_output(out, "new")
    assert ei.value.errno == errno.EEXIST and out.read_text() == "mine"
    write_output(out, "new", force=True)
    assert out.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]


def test_a_new_file_is_written_and_nothing_else(tmp_path: Path) -> None:
    assert write_output(tmp_path / "a.tar", b"\x00" * 10) == str(tmp_path / "a.tar")
    assert os.listdir(tmp_path) == ["a.tar"] and (tmp_path / "a.tar").read_bytes() == b"\x00" * 10


def test_dash_is_stdout_only_where_allowed(tmp_path: Path) -> None:
    buf = io.BytesIO()
    assert write_output("-", b"doc", stdout=buf) == "-" and buf.getvalue() == b"doc"
    with pytest.raises(P2pdmaError, match="cannot go to stdout"):
        write_output("-", b"doc")
    os.chdir(tmp_path)
    assert not (tmp_path / "-").exists()


def test_dev_full_is_one_line_and_dev_null_is_fine() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this machine")
    with pytest.raises(P2pdmaError, match=r"/dev/full: write failed \(No space left on device\)") as ei:
        write_output("/dev/full", b"x" * 100_000)
    assert ei.value.errno == errno.ENOSPC and "\n" not in str(ei.value)
    assert write_output("/dev/null", b"x") == "/dev/null" and os.path.exists("/dev/null")


def test_a_failed_write_leaves_nothing_and_removes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "capture.tar"
    out.write_bytes(b"precious")
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if fd > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    for force in (False, True):
        with pytest.raises(P2pdmaError):
            write_output(out, b"new" * 1000, force=force)
    monkeypatch.undo()
    assert out.read_bytes() == b"precious" and os.listdir(tmp_path) == ["capture.tar"]
    with pytest.raises(P2pdmaError, match="No space left"):
        monkeypatch.setattr(os, "write", full)
        write_output(tmp_path / "new.tar", b"x")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["capture.tar"]


def test_directories_fifos_and_long_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(P2pdmaError, match="a directory, not written"):
        write_output(tmp_path, b"x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(P2pdmaError, match="not a regular file"):
        write_output(tmp_path / "fifo", b"x")
    for bad in (str(tmp_path / ("n" * 300)), "p/" * 50_000, ""):
        with pytest.raises(P2pdmaError) as ei:
            write_output(bad, b"x")
        assert "\n" not in str(ei.value) and len(str(ei.value)) < 300
    assert sorted(os.listdir(tmp_path)) == ["fifo"]
