"""The shortcuts of issue 14 give what the general paths give: one-call inflation against the streaming
loop, integers parsed from bytes against the decoded text, upstream walks memoised in build_topology."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
from pathlib import Path
from typing import Any

import pytest

from p2pdma.pci.topology import RawFunction, build_topology
from p2pdma.sources import archive as archmod
from p2pdma.sources.fs import LiveFs
from p2pdma.sources.sysfs import SysfsReader

RAW = bytes(range(256)) * 64


def _outcome(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", archmod.decompress(data)
    except archmod.ArchiveError as exc:
        return "refused", str(exc)


STREAMS = {
    "gzip": gzip.compress(RAW),
    "gzip, two members": gzip.compress(RAW[:999]) + gzip.compress(RAW[999:]),
    "gzip, zero padding": gzip.compress(RAW) + bytes(64),
    "gzip, trailing junk": gzip.compress(RAW) + b"junk",
    "gzip, truncated": gzip.compress(RAW)[:-5],
    "gzip, bad crc": gzip.compress(RAW)[:-8] + bytes(8),
    "gzip, header only": gzip.compress(RAW)[:10],
    "gzip, empty": gzip.compress(b""),
    "bzip2": bz2.compress(RAW),
    "bzip2, two streams": bz2.compress(RAW[:999]) + bz2.compress(RAW[999:]),
    "bzip2, truncated": bz2.compress(RAW)[:-9],
    "xz": lzma.compress(RAW),
    "xz, truncated": lzma.compress(RAW)[:-9],
    "xz, two streams": lzma.compress(RAW[:999]) + lzma.compress(RAW[999:]),
}


@pytest.mark.parametrize("case", sorted(STREAMS))
def test_one_call_inflate_matches_the_streaming_loop(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = STREAMS[case]
    fast = _outcome(data)
    monkeypatch.setattr(archmod, "_one_stream", lambda raw, cap: None)
    assert fast == _outcome(data)


def test_one_call_inflate_keeps_the_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = gzip.compress(bytes(4 << 20))  # expands about 1000 times its size
    monkeypatch.setattr(archmod, "RATIO_FLOOR", 1 << 16)
    fast = _outcome(bomb)
    assert fast[0] == "refused"
    monkeypatch.setattr(archmod, "_one_stream", lambda raw, cap: None)
    assert fast == _outcome(bomb)


@pytest.mark.parametrize("text", [b" 12\n", b"0x1f\n", b"1_0", "\u0663\u0664".encode(), b"12\x00", b"\xff\xfe",
                                  b" \x0c12\x0b", b"", b"-3\n", "\u00a012".encode()])
@pytest.mark.parametrize("base", [10, 16])
def test_int_in_reads_as_read_int(tmp_path: Path, text: bytes, base: int) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "value").write_bytes(text)
    one, two = SysfsReader(LiveFs(str(tmp_path))), SysfsReader(LiveFs(str(tmp_path)))
    assert one.int_in("d", None, "value", base) == two.read_int("d/value", base)
    assert one.warnings == two.warnings


def _reference_parents(raws: list[RawFunction]) -> tuple[list[str | None], list[str]]:
    """The upstream-loop breaking of build_topology before the walks were memoised."""
    by = {r.bdf: r for r in raws}
    warn: list[str] = []
    parents: dict[str, str | None] = {}
    for b, r in by.items():
        src = by.get(r.physfn) if r.physfn else r
        if r.physfn and src is None:
            warn.append(f"{b}: physfn {r.physfn} is not in the tree; treating the VF as its own PF")
            src = r
        assert src is not None
        p = src.parent_bdf
        if p is not None and p not in by:
            warn.append(f"{b}: parent {p} is not in the tree; placed on the root bus")
            p = None
        parents[b] = p
    for b in by:
        seen = {b}
        cur = parents[b]
        while cur is not None:
            if cur in seen:
                warn.append(f"{b}: upstream bridges form a loop at {cur}; placed on the root bus")
                parents[b] = None
                break
            seen.add(cur)
            cur = parents[cur]
    return [parents[b] for b in sorted(by)], warn


def test_memoised_upstream_walks_break_loops_as_before() -> None:
    rng = random.Random(14)
    loops = 0
    for _ in range(400):
        bdfs = [f"0000:00:{i:02x}.0" for i in range(rng.randint(1, 8))]
        raws = [RawFunction(bdf=b, host_bridge="pci0000:00", parent_bdf=rng.choice([*bdfs, None, "0000:09:00.0"]),
                            physfn=rng.choice([None, None, None, *bdfs]), class_code=0x060400) for b in bdfs]
        topo = build_topology(raws, name="x")
        parents, warn = _reference_parents(raws)
        assert [d.parent for d in topo.devices] == parents
        assert list(topo.warnings) == warn
        loops += any("loop at" in w for w in warn)
    assert loops > 50
