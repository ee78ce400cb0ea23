"""Bundled example machines (YAML specs inside the package), by name."""

from __future__ import annotations

from importlib import resources

from p2pdma.errors import InputError
from p2pdma.pci.topology import Topology
from p2pdma.sources import safeload
from p2pdma.sources.spec import SpecMachine, parse_spec

DEFAULT_EXAMPLE = "gpu8-switches"


def names() -> list[str]:
    """Names of the bundled machines, sorted."""
    files = resources.files(__package__)
    return sorted(f.name[:-5] for f in files.iterdir() if f.name.endswith(".yaml"))


def load_spec(name: str) -> SpecMachine:
    """The parsed spec of a bundled machine; InputError naming the choices when unknown."""
    if name not in names():
        raise InputError(f"unknown example {name!r} (choose from: {', '.join(names())})")
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text()
    return parse_spec(safeload.loads(text, f"example {name}", kind="spec"), where=f"example {name}")


def load(name: str) -> Topology:
    """The topology of a bundled machine."""
    return load_spec(name).topology(source=f"example:{name}")
