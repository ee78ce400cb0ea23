"""sources.open_machine(): one door for every kind of input, and one-line errors for bad names."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pdma import examples
from p2pdma.errors import InputError
from p2pdma.sources import MACHINE_KINDS, open_machine, open_mapping


def test_example_and_spec_give_the_same_machine(tmp_path: Path) -> None:
    name = examples.DEFAULT_EXAMPLE
    spec = tmp_path / "m.yaml"
    from importlib import resources

    spec.write_text(resources.files("p2pdma.examples").joinpath(f"{name}.yaml").read_text())
    a = open_machine("example", name)
    b = open_machine("spec", str(spec))
    assert [d.bdf for d in a.devices] == [d.bdf for d in b.devices]
    c = open_mapping({"spec": "m.yaml"}, base=tmp_path)
    assert [d.bdf for d in c.devices] == [d.bdf for d in a.devices]
    assert [d.bdf for d in open_mapping(None, default_example=name).devices] == [d.bdf for d in a.devices]


@pytest.mark.parametrize("kind,value,needle", [
    ("root", "", "empty name"),
    ("root", "/nonexistent/p2pdma-root", "no such directory"),
    ("example", "no-such-example", "unknown example"),
    ("floppy", "x", "unknown machine source"),
    ("spec", "", "needs a file name"),
])
def test_bad_names_are_one_line_errors(kind: str, value: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        open_machine(kind, value)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_every_kind_has_a_cli_option() -> None:
    from p2pdma.cli.common import SOURCE_OPTIONS

    assert [o.lstrip("-").replace("-", "_") for o, _, _ in SOURCE_OPTIONS] == list(MACHINE_KINDS)


def test_cli_engine_names_match_the_fleet() -> None:
    from p2pdma.cli.fleet import ENGINE_NAMES
    from p2pdma.fleet.engines import ENGINES

    assert tuple(ENGINE_NAMES) == tuple(ENGINES)
