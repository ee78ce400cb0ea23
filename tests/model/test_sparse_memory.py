"""The fabric's sparse memory against a plain bytearray: fills, pattern tokens, writes and copies at
any phase, and the chunk-wise comparison, agree byte for byte (chunks shrunk to 64 bytes)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdma.model import fabric as F

SMALL = 64
SPAN = SMALL * 6


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(F, "CHUNK", SMALL)
    F._pattern_block.cache_clear()
    yield
    F._pattern_block.cache_clear()


def _ref_pattern(seed: int, start: int, n: int) -> bytes:
    """The pattern stream written out block by block, independently of pattern_slice."""
    out = b""
    for block in range(start // SMALL, (start + n) // SMALL + 1):
        out += np.random.default_rng([seed, 0x9D, block]).integers(0, 256, size=SMALL, dtype=np.uint8).tobytes()
    base = (start // SMALL) * SMALL
    return out[start - base : start - base + n]


offs = st.integers(0, SPAN - 1)
ops = st.one_of(
    st.tuples(st.just("fill"), offs, st.integers(0, SPAN), st.integers(0, 3)),
    st.tuples(st.just("pattern"), offs, st.integers(0, SPAN), st.integers(1, 3), st.integers(0, 200)),
    st.tuples(st.just("write"), offs, st.binary(max_size=3 * SMALL)),
    st.tuples(st.just("copy"), offs, offs, st.integers(0, SPAN)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=12), offs, offs, st.integers(0, SPAN))
def test_sparse_memory_is_a_byte_array(steps: list[tuple], a: int, b: int, n: int) -> None:  # type: ignore[type-arg]
    mem, ref = F.Memory(), bytearray(2 * SPAN + 4 * SMALL)
    other, oref = F.Memory(), bytearray(len(ref))
    other.fill_pattern(0, SPAN, 7)
    oref[:SPAN] = _ref_pattern(7, 0, SPAN)
    for op in steps:
        if op[0] == "fill":
            _, off, k, v = op
            mem.fill(off, k, v)
            ref[off : off + k] = bytes([v]) * k
        elif op[0] == "pattern":
            _, off, k, seed, start = op
            mem.fill_pattern(off, k, seed, start)
            ref[off : off + k] = _ref_pattern(seed, start, k)
        elif op[0] == "write":
            _, off, data = op
            mem.write(off, np.frombuffer(data, dtype=np.uint8))
            ref[off : off + len(data)] = data
        else:
            _, src, dst, k = op
            mem.copy_from(other, src, dst, k)
            ref[dst : dst + k] = oref[src : src + k]
    assert bytes(mem.read(0, len(ref))) == bytes(ref)
    # the chunk-wise comparison says exactly what comparing the bytes says
    assert mem.same(a, other, b, n) == (ref[a : a + n] == oref[b : b + n])
    assert mem.same(a, mem, a, n)


def test_whole_chunks_of_patterns_and_fills_cost_nothing_at_any_phase() -> None:
    src = F.Memory()
    src.fill_pattern(0, 40 * SMALL, 5)
    dst = F.Memory()
    dst.copy_from(src, 13, 2 * SMALL, 30 * SMALL)  # another phase: tokens again, not bytes
    assert dst.resident <= 2 * SMALL and src.resident == 0
    assert bytes(dst.read(2 * SMALL, 30 * SMALL)) == _ref_pattern(5, 13, 30 * SMALL)
    assert dst.same(2 * SMALL, src, 13, 30 * SMALL) and not dst.same(2 * SMALL, src, 14, 30 * SMALL)
