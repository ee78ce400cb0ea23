"""The live root's sparse config reads (sources.livecfg): decode() of the sparse buffer equals decode() of
the full bytes for random and structured config spaces, every bundled example and random synthetic
machines; a root read through SparseConfigFs gives the same topology; fewer bytes are read."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdma.examples import load_spec
from p2pdma.examples import names as example_names
from p2pdma.pci import config as cfg
from p2pdma.sources.livecfg import SparseConfigFs, sparse_config
from p2pdma.sources.synth import generate_machine
from p2pdma.sources.sysfs import read_root, write_root


class Reader:
    """A pread over bytes that counts what it was asked for; ``cap`` truncates reads past it, as the
    kernel does for an unprivileged reader (64 bytes)."""

    def __init__(self, data: bytes, cap: int | None = None) -> None:
        self.data = data
        self.cap = len(data) if cap is None else cap
        self.read = 0

    def __call__(self, length: int, off: int) -> bytes:
        got = self.data[off : min(off + length, self.cap)]
        self.read += len(got)
        return got


def _check(data: bytes, cap: int | None = None) -> Reader:
    rd = Reader(data, cap)
    sparse = sparse_config(rd, len(data))
    want = data[: len(data) if cap is None else cap]
    assert len(sparse) == len(want)
    if len(want) >= cfg.PCI_STD_HEADER_SIZEOF:
        assert cfg.decode(sparse) == cfg.decode(want)
    else:
        assert sparse == want
    return rd


@st.composite
def ext_chain(draw: st.DrawFn) -> bytes:
    """4 KiB of config space with a PCIe capability and a random extended capability chain (loops,
    ACS with or without an egress vector, ~0 and 0 terminators, pointers below 0x100)."""
    buf = bytearray(random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(4096))
    struct.pack_into("<H", buf, cfg.PCI_STATUS, cfg.PCI_STATUS_CAP_LIST)
    buf[cfg.PCI_CAPABILITY_LIST] = 0x40
    buf[0x40] = cfg.PCI_CAP_ID_EXP
    buf[0x41] = 0
    positions = draw(st.lists(st.integers(0x40, 0x3FF).map(lambda x: x * 4), min_size=1, max_size=12))
    pos = 0x100
    for nxt in [*positions[1:], draw(st.sampled_from([0, 0x100, 0x40, positions[0]]))]:
        cap_id = draw(st.sampled_from([cfg.PCI_EXT_CAP_ID_ACS, 0x0001, 0x0010, 0x000B]))
        struct.pack_into("<I", buf, pos, cap_id | (1 << 16) | (nxt << 20))
        if cap_id == cfg.PCI_EXT_CAP_ID_ACS and pos + 8 <= 4096:
            acs_cap = draw(st.integers(0, 0xFFFF))
            struct.pack_into("<H", buf, pos + cfg.PCI_ACS_CAP, acs_cap)
        pos = nxt if nxt >= 0x100 else 0x100
        if nxt < 0x100:
            break
    if draw(st.booleans()):
        struct.pack_into("<I", buf, draw(st.sampled_from(positions)), draw(st.sampled_from([0, 0xFFFFFFFF])))
    return bytes(buf)


@settings(max_examples=400, deadline=None)
@given(data=ext_chain())
def test_sparse_decodes_as_full_on_structured_chains(data: bytes) -> None:
    rd = _check(data)
    assert rd.read < len(data)  # the 256-byte head and some headers, never the whole 4 KiB


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([4096, 4096, 256, 300, 64, 10]),
       cap=st.sampled_from([None, 64]))
def test_sparse_decodes_as_full_on_random_bytes(seed: int, size: int, cap: int | None) -> None:
    _check(random.Random(seed).randbytes(size), cap)


@pytest.mark.parametrize("name", example_names())
def test_examples_configs(name: str) -> None:
    for raw in load_spec(name).raws:
        if raw.config is not None:
            _check(raw.config)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ec=st.floats(0, 1), small=st.sampled_from([0.0, 0.3]))
def test_synthetic_configs(seed: int, ec: float, small: float) -> None:
    m = generate_machine(12, seed=seed, acs_probability=0.7, ec_probability=ec, config_size_64_probability=small)
    for raw in m.raws:
        if raw.config is not None:
            _check(raw.config)
            _check(raw.config, cap=64)


def test_a_root_through_sparse_reads_is_the_same_topology(tmp_path: Path) -> None:
    m = generate_machine(24, seed=7, acs_probability=0.8, ec_probability=0.5)
    write_root(tmp_path, m.raws, cpu=m.cpu, kernel_release="7.2.13")
    plain = read_root(tmp_path)
    sparse = read_root(SparseConfigFs(str(tmp_path)))
    assert [d.bdf for d in sparse.devices] == [d.bdf for d in plain.devices]
    for a, b in zip(plain.devices, sparse.devices, strict=True):
        assert (a.acs, a.acs_known, a.port_type, a.cur_width, a.cur_speed, a.class_code) == (
            b.acs, b.acs_known, b.port_type, b.cur_width, b.cur_speed, b.class_code)
    assert sparse.warnings == plain.warnings
    assert any(d.acs is not None for d in plain.devices)
