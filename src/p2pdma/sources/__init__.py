"""Where a machine comes from: live or captured sysfs, a spec file, bundled examples, hwloc, lspci, NCCL.

``open_machine()`` is the one door: the CLI, the fleet and the scenarios open every machine through it.
Each reader is imported only when its kind of input is asked for, so opening one kind stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from p2pdma.errors import InputError

if TYPE_CHECKING:
    from p2pdma.pci.topology import Topology

# The kinds of input, in the order the CLI offers them (``--root``, ``--example``, ...).
MACHINE_KINDS: tuple[str, ...] = ("root", "example", "spec", "hwloc", "lspci", "nccl_xml")


def open_machine(kind: str | None = None, value: str | os.PathLike[str] | None = None, *,
                 base: str | os.PathLike[str] | None = None, data: bytes | None = None,
                 name: str | None = None) -> Topology:
    """The machine of one input: ``root`` (a directory or a capture archive; ``None`` = live ``/``),
    ``example``, ``spec``, ``hwloc``, ``lspci`` or ``nccl_xml``; ``kind=None`` is the live machine.

    ``base`` is the directory relative file names are taken from (a scenario's own folder). ``data``
    is the file's bytes already read (a fleet worker that got them with its task: ``root`` archives
    and ``hwloc`` XML), ``value`` then only names it; ``name`` overrides the machine's name.
    """
    if kind is None:
        kind, value = "root", None
    if kind not in MACHINE_KINDS:
        raise InputError(f"unknown machine source {kind!r} (one of: {', '.join(MACHINE_KINDS)})")
    if data is not None:
        return _open_bytes(kind, str(value or kind), data, name)
    if kind == "example":
        from p2pdma import examples

        if value is None:
            raise InputError("an example machine needs a name (see `p2pdma examples`)")
        return examples.load(str(value))
    if value is not None and base is not None and not os.path.isabs(value):
        value = os.path.join(base, value)
    if kind == "root":
        return _open_root(value, name)
    if value is None or str(value) == "":
        raise InputError(f"--{kind.replace('_', '-')} needs a file name")
    path = str(value)
    if kind == "spec":
        from p2pdma.sources.spec import load_spec

        return load_spec(path).topology(source=f"spec:{path}")
    if kind == "hwloc":
        from p2pdma.sources.hwloc import read_hwloc

        return read_hwloc(path)
    if kind == "lspci":
        from p2pdma.sources.lspci import read_lspci

        return read_lspci(path)
    from p2pdma.sources.nccl import read_nccl_xml

    return read_nccl_xml(path)


def open_mapping(source: str | Mapping[str, str] | None, *, base: str | os.PathLike[str] | None = None,
                 default_example: str | None = None) -> Topology:
    """A machine named as scenarios and models name it: an example name, or a one-key mapping
    ``{root|example|spec|hwloc|lspci|nccl_xml: VALUE}``; ``None`` gives ``default_example``."""
    if source is None:
        if default_example is None:
            raise InputError("no machine given")
        return open_machine("example", default_example)
    if isinstance(source, str):
        return open_machine("example", source)
    if len(source) != 1:
        raise InputError(f"a machine is one of {{{'|'.join(MACHINE_KINDS)}: VALUE}}")
    ((kind, value),) = source.items()
    return open_machine(kind, value, base=base)


def _open_bytes(kind: str, where: str, data: bytes, name: str | None) -> Topology:
    """A capture archive or an hwloc XML document given as bytes (nothing is read from disk)."""
    if kind == "root":
        from p2pdma.sources.archive import load_capture, machine_name

        return load_capture(where, data=data, name=name or machine_name(where))
    if kind == "hwloc":
        from p2pdma.errors import SourceError
        from p2pdma.sources.hwloc import MAX_XML, parse_hwloc

        if len(data) > MAX_XML:
            raise SourceError(f"{where}: larger than {MAX_XML} bytes")
        return parse_hwloc(data, name=name or os.path.basename(where).rsplit(".", 1)[0], where=where)
    raise InputError(f"a {kind} machine is read from its file, not from bytes")


def _open_root(value: str | os.PathLike[str] | None, name: str | None = None) -> Topology:
    """A sysfs root: ``None`` is the live ``/``; a directory is read in place; a file is a capture archive."""
    if value is not None and str(value) == "":
        raise InputError("--root needs a directory or a capture archive (an empty name is not the live machine)")
    from p2pdma.sources.sysfs import read_root

    root = "/" if value is None else os.fspath(value)
    if os.path.abspath(root) == "/":  # the live machine: config space read sparsely (sources.livecfg)
        from p2pdma.sources.livecfg import SparseConfigFs

        return read_root(SparseConfigFs("/"), name=name)
    if os.path.isdir(root):  # an unpacked root: the archive reader is not even imported
        return read_root(root, name=name)
    from p2pdma.sources.capture import is_archive, load_capture

    if os.path.isfile(root) or is_archive(root):
        return load_capture(root) if name is None else load_capture(root, name=name)
    if not os.path.exists(root):
        raise InputError(f"{root}: no such directory")
    return read_root(root, name=name)


__all__ = ["MACHINE_KINDS", "open_machine", "open_mapping"]
