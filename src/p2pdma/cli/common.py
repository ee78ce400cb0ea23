"""Options and helpers every command shares: the machine options, loading, warnings, device JSON, the
view options (``--all-functions``, ``--class``, ``--devices``), device names, and the terminal (colour,
width)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from p2pdma.errors import InputError

if TYPE_CHECKING:
    from p2pdma.pci.names import Selection
    from p2pdma.pci.topology import Device, Topology

MAX_WARNINGS = 8

# The machine options: (option, metavar, help). All are mutually exclusive; none given = live /sys.
SOURCE_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--root", "DIR", "read a captured sysfs/procfs root instead of /"),
    ("--example", "NAME", "a bundled example machine (see `p2pdma examples`)"),
    ("--spec", "FILE", "a machine described in YAML/JSON (spec format)"),
    ("--hwloc", "FILE.xml", "an hwloc XML export (lstopo --of xml): PCI tree, ACS unknown"),
    ("--lspci", "FILE", "an lspci -xxxx dump (what lspci -F reads): tree from bus numbers, ACS from config"),
    ("--nccl-xml", "FILE.xml", "an NCCL topology XML (NCCL_TOPO_DUMP_FILE): PCI tree, ACS unknown"),
)


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The machine options, ``--kernel`` and ``--json``."""
    from p2pdma.p2p.kernels import AUTO, KERNEL_CHOICES

    g = p.add_argument_group("machine (default: this machine's live /sys)")
    src = g.add_mutually_exclusive_group()
    for option, metavar, helptext in SOURCE_OPTIONS:
        src.add_argument(option, metavar=metavar, help=helptext)
    p.add_argument(
        "--kernel",
        type=_kernel_arg,
        choices=_KernelChoices(KERNEL_CHOICES),
        default=AUTO,
        metavar="{" + ",".join(KERNEL_CHOICES) + ",X.Y}",
        help="kernel rules: auto (the machine's kernel release; default), a profile, or a release X.Y[.Z]"
        " (classic/latest: aliases of the newest mainline profile)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


class _KernelChoices(tuple[str, ...]):
    """The named ``--kernel`` choices, also containing any release X.Y[.Z] (checked by _kernel_arg)."""

    def __contains__(self, value: object) -> bool:
        import re

        return tuple.__contains__(self, value) or (
            isinstance(value, str) and re.fullmatch(r"\d+\.\d+(\.\d+)?", value) is not None
        )


def _kernel_arg(value: str) -> str:
    """``--kernel`` syntax check through the resolver (one-line argparse error when it refuses)."""
    from p2pdma.p2p.kernels import AUTO, resolve_kernel

    if value != AUTO:
        try:
            resolve_kernel(value, None)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return value


def machine_source(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The (kind, value) of the machine option given, or (None, None) for the live machine."""
    for option, _, _ in SOURCE_OPTIONS:
        value = getattr(args, _dest(option), None)
        if value is not None:
            return _dest(option), value
    return None, None


def load_topology(args: argparse.Namespace) -> Topology:
    """The machine named by the machine options (live /sys by default), through sources.open_machine()."""
    from p2pdma.sources import open_machine

    kind, value = machine_source(args)
    topo = open_machine(kind, value)
    resolve_kernel_arg(args, topo, live=kind is None)
    return topo


def with_kernel_source(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``doc`` with ``kernel_source`` (why that profile ran: the osrelease, ``--kernel``, the default)
    right after ``kernel``; every other key in its place (an additive field)."""
    source = getattr(args, "kernel_source", None)
    if source is None or "kernel" not in doc:
        return doc
    out: dict[str, Any] = {}
    for k, v in doc.items():
        out[k] = v
        if k == "kernel":
            out["kernel_source"] = source
    return out


def resolve_kernel_arg(args: argparse.Namespace, topo: Topology | None, live: bool = False) -> None:
    """Resolve ``args.kernel`` in place to a profile name (auto: the live ``uname -r`` or the input's
    captured osrelease), set ``args.kernel_source``/``args.kernel_notes``, print the notes on stderr.
    None (simulate: the scenario's kernel) is left for the command."""
    import os

    from p2pdma.p2p.kernels import resolve_kernel

    name = getattr(args, "kernel", None)
    if name is None:
        return
    release = os.uname().release if live else getattr(topo, "kernel_release", None)
    profile, source, notes = resolve_kernel(name, release)
    if name == "auto" and not release:
        # the default on an input without a release: said in kernel_source, not on every run's stderr
        source, notes = "no kernel release in this input: newest mainline profile", []
    if live and name == "auto":
        source = f"uname -r {release}"
    if name != "auto":  # the user's choice: say so, with what it resolved through
        source = f"--kernel {name}" + (f" ({source})" if source and source != "option" else "")
    args.kernel, args.kernel_source, args.kernel_notes = profile, source, notes
    for n in notes:
        defer(f"p2pdma: note: {n}")


# Notes and warnings about the input wait here until the command has done its work: printed then (main()),
# or dropped when it fails, so that a refusal is the one line on stderr.
DEFERRED: list[str] = []


def defer(line: str) -> None:
    """Queue one stderr line (a note or warning about the input) for the end of the command."""
    DEFERRED.append(line)


def flush_deferred(show: bool = True) -> None:
    """Print (or, after a refusal, drop) the queued stderr lines."""
    lines = DEFERRED[:]
    DEFERRED.clear()
    if show:
        for line in lines:
            print(line, file=sys.stderr)


def warn(topo: Topology) -> None:
    """The machine's warnings on stderr (at the end of the command), at most MAX_WARNINGS lines and
    a count of the rest."""
    term = terminal(sys.stderr)
    for w in topo.warnings[:MAX_WARNINGS]:
        defer(term.wrap(f"p2pdma: warning: {w}"))
    if len(topo.warnings) > MAX_WARNINGS:
        defer(f"p2pdma: warning: ... and {len(topo.warnings) - MAX_WARNINGS} more")


def device_json(d: Device) -> dict[str, Any]:
    """A function as the JSON documents list it (``bdf, vendor, device, class, kind`` + extras)."""
    return {
        "bdf": d.bdf,
        "vendor": f"{d.vendor:#06x}",
        "device": f"{d.device:#06x}",
        "class": f"{d.class_code:#08x}",
        "kind": d.kind,
        "port_type": d.port_type_name,
        "parent": d.parent,
        "physfn": d.physfn,
        "host_bridge": d.host_bridge,
        "name": " ".join(x for x in (d.vendor_name, d.device_name or d.class_name) if x) or None,
        "acs_ctrl": None if d.acs is None else f"{d.acs.ctrl:#06x}",
        "acs_known": d.acs_known,
        "iommu_group": d.iommu_group,
        "numa_node": d.numa_node,
    }


def resolve(topo: Topology, name: str) -> Device:
    """The device a user named (alias, ``dN``, short or full BDF, OS name: names.lookup()); InputError
    naming the machine, with "did you mean", when there is none."""
    from p2pdma.pci.names import lookup

    return lookup(topo, name)


def add_view_args(p: argparse.ArgumentParser, devices: bool = True) -> None:
    """``--all-functions``, ``--class`` and (unless the command takes devices itself) ``--devices``."""
    g = p.add_argument_group("which functions (default: the devices people peer: GPUs, NICs, NVMe, accelerators)")
    g.add_argument("--all-functions", action="store_true",
                   help="every function, with bridges' memory maps, chipset and uncore functions")
    g.add_argument("--class", dest="classes", metavar="CLASS[,CLASS]",
                   help="only these classes: gpu, nic, nvme, accel")
    if devices:
        g.add_argument("--devices", metavar="NAME[,NAME]",
                       help="only these functions (alias GPU0, dN, BDF 3:0.0 or 0000:03:00.0, OS name mlx5_0)")
    g.add_argument("--max-functions", type=_positive, default=MAX_FUNCTIONS, metavar="N",
                   help=f"refuse more than N functions in view (default {MAX_FUNCTIONS}: N*N pairs must finish "
                        "in a minute or two and stay under 1 GiB)")


# Functions in view past which a pair matrix is refused: 1,000 endpoints take ~25-45 s as JSON and
# ~0.6 GB as p2pdma.matrix/2 here; 3,000 took over 5 minutes and 4.8 GB.
MAX_FUNCTIONS = 1024


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {n}")
    return n


def check_size(args: argparse.Namespace, n: int) -> None:
    """Refuse a view of ``n`` functions above ``--max-functions``, naming the limit and how to raise it."""
    limit = getattr(args, "max_functions", MAX_FUNCTIONS)
    if n > limit:
        raise InputError(f"{n} functions in view: more than --max-functions {limit} ({n * n:,} pairs would not "
                         "finish in a minute or two); pick some with --class or --devices, or raise --max-functions")


def select(args: argparse.Namespace, topo: Topology, include_bridges: bool = False) -> Selection:
    """The functions the view options pick (names.select_devices()), within ``--max-functions``."""
    from p2pdma.pci.names import select_devices

    sel = select_devices(
        topo,
        all_functions=bool(getattr(args, "all_functions", False)) or include_bridges,
        include_bridges=include_bridges,
        classes=getattr(args, "classes", None),
        devices=picked if isinstance(picked := getattr(args, "devices", None), str) else None,
    )
    check_size(args, len(sel.bdfs))
    return sel


# --- the terminal --------------------------------------------------------------------------------------
PIPED_WIDTH = 120  # the table width when stdout is not a terminal and COLUMNS is not set
ANSI = {"B": "32", "H": "33", "-": "31", "X": "2", "?": "35", "bold": "1", "dim": "2", "warn": "33"}
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, slots=True)
class Term:
    """How to print: ``colour`` (a TTY without NO_COLOR), ``width`` to wrap at (None: piped, no wrap) and
    ``table_width`` (where a wide table is split into column blocks)."""

    colour: bool = False
    width: int | None = None
    table_width: int = PIPED_WIDTH

    def paint(self, text: str, style: str) -> str:
        """``text`` in the ANSI colour of ``style`` (a map type letter or bold/dim/warn) on a colour TTY."""
        code = ANSI.get(style)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code and text else text

    def wrap(self, text: str) -> str:
        """Every line of ``text`` wrapped at ``width`` (hanging indent; never inside a token); unchanged
        when piped."""
        if self.width is None:
            return text
        return "\n".join(x for line in text.split("\n") for x in wrap_line(line, self.width))


def terminal(stream: TextIO | None = None) -> Term:
    """The Term for ``stream`` (stdout): colour on a TTY unless NO_COLOR is set (https://no-color.org) or
    TERM=dumb; width from COLUMNS, else the TTY's size; piped output is plain and unwrapped."""
    out = sys.stdout if stream is None else stream
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    cols_env = os.environ.get("COLUMNS", "")
    cols = int(cols_env) if cols_env.isdigit() and int(cols_env) >= 20 else None
    if not tty:
        return Term(False, None, cols or PIPED_WIDTH)
    if cols is None:
        import shutil

        cols = max(20, shutil.get_terminal_size((PIPED_WIDTH, 24)).columns)
    colour = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return Term(colour, cols, cols)


def visible_len(text: str) -> int:
    """The width of ``text`` on a terminal (ANSI colour codes take none)."""
    return len(_ANSI_RE.sub("", text))


def wrap_line(line: str, width: int, hang: int | None = None) -> list[str]:
    """``line`` cut at spaces into pieces of at most ``width`` columns, continuation lines indented by
    ``hang`` (at most the width less 24; default: four more than the line's own indent, at most half the
    width); a token longer than the width stays whole on its own line."""
    if visible_len(line) <= width:
        return [line]
    indent = len(line) - len(line.lstrip(" "))
    cont = " " * (min(indent + 4, max(0, width // 2)) if hang is None else min(hang, max(0, width - 24)))
    out: list[str] = []
    cur = line[:indent]
    start = True
    for word in re.split(r"(?<=\S)(?=\s)|(?<=\s)(?=\S)", line[indent:]):
        if word.isspace():
            if not start:
                cur += word
            continue
        if not start and visible_len(cur + word) > width:
            out.append(cur.rstrip())
            cur = cont
            start = True
        cur += word
        start = False
    out.append(cur.rstrip())
    return out


# --- devices as the text views show them ----------------------------------------------------------------
def cpus_text(d: Device) -> str:
    """The local CPU list, ``-`` when unknown."""
    return d.local_cpulist or "-"


def numa_text(d: Device) -> str:
    """The NUMA node, ``-`` when unknown or -1 (no affinity)."""
    return "-" if d.numa_node is None or d.numa_node < 0 else str(d.numa_node)


def describe(d: Device) -> str:
    """A function's description after its names: port type (bridges), vendor and device name with ids, VF,
    link and ACS."""
    from p2pdma.pci import config as cfg

    parts = []
    if d.port_type_name and (d.is_bridge or d.port_type != cfg.PCI_EXP_TYPE_ENDPOINT):
        parts.append(d.port_type_name + ("?" if d.port_type_inferred else ""))
    ident = f"[{d.vendor:04x}:{d.device:04x}]"
    name = " ".join(x for x in (d.vendor_name, d.device_name or d.class_name) if x)
    parts.append(f"{name} {ident}" if name else ident)
    if d.physfn:
        parts.append(f"VF of {d.physfn}")
    if d.cur_width or d.max_width:
        speed = d.cur_speed or d.max_speed
        width = d.cur_width or d.max_width
        parts.append(f"x{width} {speed:g}GT/s" if speed else f"x{width}")
    if d.acs is not None:
        parts.append(f"ACS {d.acs.ctrl:#06x} [{cfg.acs_bits_text(d.acs.ctrl)}]")
    elif not d.acs_known:
        parts.append("ACS unknown")
    return "  ".join(parts)


def device_table(topo: Topology, bdfs: Sequence[str], label: dict[str, str], width: int | None = None) -> list[str]:
    """One aligned line per function: label, short BDF, NUMA, local CPUs, OS names, driver, description;
    with ``width``, longer lines wrap with the description continued under its column."""
    from p2pdma.pci.names import short_bdf

    rows = [
        [label.get(b, b), short_bdf(b), numa_text(topo[b]), cpus_text(topo[b]),
         ",".join(topo[b].os_names) or "-", topo[b].driver or "-", describe(topo[b])]
        for b in bdfs
    ]
    head = ["", "BDF", "NUMA", "CPUs", "OS names", "driver", "device"]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head) - 1)]

    def fmt(r: list[str]) -> str:
        return ("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip()

    lines = [fmt(head), *(fmt(r) for r in rows)]
    if width is None:
        return lines
    hang = 2 + sum(w + 2 for w in widths)  # continuation lines start under the device column
    return [x for line in lines for x in wrap_line(line, width, hang)]


def name_of(topo: Topology, bdf: str, label: dict[str, str] | None = None) -> str:
    """``GPU0 (0000:05:00.0, eth0)``: a function's label (alias, ``dN``, ``bN``) with its BDF and OS names."""
    from p2pdma.pci.names import labels

    name = (labels(topo) if label is None else label).get(bdf)
    extra = ", ".join([bdf, *topo[bdf].os_names])
    return f"{name} ({extra})" if name else bdf


def counts_line(counts: dict[str, int], why: dict[str, int] | None = None) -> str:
    """``pairs: BUS_ADDR 2, ...; uncertain 4 (ACS unknown 4); of 30 distinct ordered pairs`` (self pairs
    not counted); ``why`` splits the uncertain pairs by the fact the input lacked (uncertain_why())."""
    kinds = ", ".join(f"{k} {counts[k]}" for k in ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED"))
    unc = f"uncertain {counts['uncertain']}"
    if why and counts["uncertain"]:
        parts = [f"{label} {why[k]}" for k, label in (("acs", "ACS unknown"),
                                                      ("host_bridge", "host bridge device not in this input"))
                 if why.get(k)]
        unc += f" ({', '.join(parts)})"
    return f"pairs: {kinds}; {unc}; of {counts['pairs']} distinct ordered pairs"


class Progress:
    """One progress line on stderr for matrix, fleet and check: a bar when the total is known, a count
    otherwise, the rate and an ETA; drawn only on a terminal, at most ten times a second, and cleared
    (not left behind) when done."""

    def __init__(self, unit: str, stream: TextIO | None = None, min_total: int = 0) -> None:
        import time

        self.unit, self.stream, self.min_total = unit, stream if stream is not None else sys.stderr, min_total
        self.start = self.last = time.monotonic()
        try:
            self.on = self.stream.isatty()
        except (AttributeError, ValueError):
            self.on = False
        self.drawn = False

    def line(self, done: int, total: int | None, now: float) -> str:
        """The text of the line at ``now`` (monotonic seconds)."""
        spent = max(now - self.start, 1e-9)
        rate = done / spent
        if total:
            width = 24
            filled = width * min(done, total) // total
            eta = (total - done) / rate if rate > 0 else 0.0
            return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit}, "
                    f"{rate:,.0f}/s, ETA {eta:.0f} s")
        return f"{done:,} {self.unit}, {rate:,.0f}/s, {spent:.0f} s"

    def update(self, done: int, total: int | None = None, extra: str = "") -> None:
        """Draw ``done`` of ``total`` (None: unknown); clears itself when ``done == total``."""
        import time

        if not self.on or (total is not None and total < self.min_total):
            return
        now = time.monotonic()
        if total is not None and done >= total:
            self.clear()
            return
        if self.drawn and now - self.last < 0.1:
            return
        self.last, self.drawn = now, True
        self.stream.write("\r\x1b[K" + self.line(done, total, now) + extra)
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line (nothing is left on the terminal)."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def matrix_progress() -> Callable[[int, int], None]:
    """A compute_matrix() row callback drawing one Progress line, for matrices of 4096 rows and more."""
    return Progress("rows", min_total=4096).update
