"""Spec parsing: addresses of BARs, the multi-function bit, bus ownership, errors with their path."""

from __future__ import annotations

import pytest

from p2pdma.errors import InputError
from p2pdma.sources.spec import parse_spec
from tests.helpers import dev, hb, machine


def test_32bit_bars_below_4g_and_64bit_above() -> None:
    t = parse_spec(machine([hb("pci0000:00", [
        dev("0000:00:01.0", bars=[{"size": "16M", "bits": 32}, {"size": "64G", "bits": 64, "prefetch": True}]),
    ])])).topology()
    bars = t["0000:00:01.0"].bars
    assert bars[0].end < 1 << 32 and bars[0].size == 16 << 20
    assert bars[1].start >= 1 << 32 and bars[1].size == 64 << 30 and bars[1].index == 1
    assert bars[1].start % bars[1].size == 0  # naturally aligned


def test_function_zero_carries_the_multifunction_bit() -> None:
    fns = [dev("0000:00:01.0"), dev("0000:00:01.1"), dev("0000:00:02.0")]
    t = parse_spec(machine([hb("pci0000:00", fns)])).topology()
    assert t["0000:00:01.0"].multifunction and t["0000:00:01.1"].multifunction
    assert not t["0000:00:02.0"].multifunction


def test_a_bus_belongs_to_one_bridge() -> None:
    spec = machine([hb("pci0000:00", [
        dev("0000:00:01.0", port="root-port", children=[dev("0000:01:00.0")]),
        dev("0000:00:02.0", port="root-port", children=[dev("0000:01:00.2")]),
    ])])
    with pytest.raises(InputError, match="bus 0000:01 already belongs below 0000:00:01.0"):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "top level must be a mapping"),
        ({"host_bridges": []}, "host_bridges must be a non-empty list"),
        ({"host_bridges": [{"name": "pci0000:00", "devices": [{"bdf": "0000:00:01.0", "id": "zz"}]}]},
         "id must be 'vendor:device'"),
        ({"host_bridges": [{"name": "pci0000:00", "devices": [{"bdf": "0000:00:01.0", "port": "weird"}]}]},
         "unknown port 'weird'"),
        ({"host_bridges": [{"name": "pci0000:00", "devices": [{"bdf": "0000:00:01.0", "bars": [{"size": 3}]}]}]},
         "power of two"),
        ({"host_bridges": [{"name": "pci0000:00", "devices": [{"bdf": "0000:00:01.0"}, {"bdf": "0000:00:01.0"}]}]},
         "duplicate bdf"),
        ({"host_bridges": [{"name": "pci0000:00", "devices": [
            {"bdf": "0000:05:00.0", "port": "root-port", "children": [{"bdf": "0000:02:00.0"}]}]}]},
         "must sit on a higher bus"),
    ],
)
def test_bad_specs_name_the_problem(spec: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_spec(spec)


def test_vfs_may_not_spill_onto_another_bridges_bus() -> None:
    spec = machine([hb("pci0000:00", [
        dev("0000:00:01.0", port="root-port", children=[
            dev("0000:01:00.0", vfs={"count": 300, "id": "15b3:101e"})]),
        dev("0000:00:02.0", port="root-port", children=[dev("0000:02:00.0")]),
    ])])
    with pytest.raises(InputError, match="VF"):
        parse_spec(spec)


def test_errors_name_the_field_path() -> None:
    spec = machine([hb("pci0000:00", [dev("0000:00:01.0"), dev("0000:00:02.0", link=[8.0, 0x40])])])
    with pytest.raises(InputError, match=r"^spec: host_bridges\[0\]\.devices\[1\]\.link\[1\]: 64 is out of range"):
        parse_spec(spec)


def test_bdfs_are_kept_in_the_kernels_spelling() -> None:
    t = parse_spec(machine([hb("pci0000:00", [dev("00000000:00:01.0"), dev("0000:00:02.0")])])).topology()
    assert [d.bdf for d in t.devices] == ["0000:00:01.0", "0000:00:02.0"]
    with pytest.raises(InputError, match="not a PCI address"):
        parse_spec(machine([hb("pci0000:00", [dev("0000:00:01.0\n")])]))


def test_vf_counts_are_bounded_before_any_vf_is_built() -> None:
    spec = machine([hb("pci0000:00", [dev(f"0000:00:{8 * i:02x}.0", vfs={"count": 40}) for i in range(3)])])
    with pytest.raises(InputError, match="more than 100 functions"):
        parse_spec(spec, max_functions=100)
    assert len(parse_spec(spec, max_functions=123).raws) == 123
