"""Names operators use for a machine's functions and the default selection of the devices people peer.

Aliases in the style of ``nvidia-smi topo -m`` (``GPU0``, ``NIC0``, ``NVME0``, ``ACCEL0``, by class and
BDF order), the filter that keeps the devices a P2P question is about (GPUs, NICs, NVMe, accelerators,
p2pmem providers), ``--class``/``--devices`` selection, one lookup accepting every name the tool prints
(alias, ``dN``, short or full BDF, OS name) with "did you mean" on a miss, and the summary of what the
filter left out. Pure functions of a Topology: no printing, errors are InputError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pdma.errors import InputError
from p2pdma.pci.topology import Device, Topology, parse_bdf

# The classes people peer, as (alias prefix, --class name): a 16-bit class (base, sub) or an 8-bit base.
PEER_CLASSES: tuple[tuple[int, int, str, str], ...] = (
    # (class value, shift: 16 = base class only, 8 = base and sub-class), alias prefix, --class name
    (0x03, 16, "GPU", "gpu"),  # display controllers
    (0x02, 16, "NIC", "nic"),  # network controllers
    (0x0108, 8, "NVME", "nvme"),  # non-volatile memory controllers
    (0x12, 16, "ACCEL", "accel"),  # processing accelerators
    (0x0B40, 8, "ACCEL", "accel"),  # co-processors (Xeon Phi and the like)
)
P2PMEM_PREFIX = "P2PMEM"  # a p2pmem provider of any other class
CLASS_NAMES = ("gpu", "nic", "nvme", "accel")

# What the hidden-functions summary calls the functions the filter leaves out, by PCI base class.
HIDDEN_KINDS: dict[int, str] = {
    0x06: "bridges",
    0x08: "uncore",  # system peripherals: IOAPIC, DMA engines, the uncore's registers
    0x11: "uncore",  # signal processing: the uncore's performance counters on Intel
    0x01: "chipset",
    0x04: "chipset",
    0x05: "chipset",
    0x07: "chipset",
    0x09: "chipset",
    0x0C: "chipset",
    0x0D: "chipset",
}

SHORT_BDF_RE = re.compile(
    r"^(?:(?P<dom>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})\.(?P<fn>[0-7])$"
)
DN_RE = re.compile(r"^(?P<kind>[dDbB])(?P<n>\d+)$")
NVME_NS_RE = re.compile(r"^(?P<ctrl>nvme\d+)(?:c\d+)?n\d+(?:p\d+)?$")


def bdf_key(bdf: str) -> tuple[int, int, int, int]:
    """Sort key of a BDF by its numbers (domains wider than four digits sort after)."""
    return parse_bdf(bdf)


def peer_class(d: Device) -> str | None:
    """The alias prefix of a function people peer (``GPU``, ``NIC``, ``NVME``, ``ACCEL``, ``P2PMEM``), else None."""
    if not d.is_bridge:
        for value, shift, prefix, _ in PEER_CLASSES:
            if d.class_code >> shift == value:
                return prefix
    if d.p2pmem is not None:
        return P2PMEM_PREFIX
    return None


def class_name(d: Device) -> str | None:
    """The ``--class`` name of a function (``gpu``, ``nic``, ``nvme``, ``accel``), else None."""
    if not d.is_bridge:
        for value, shift, _, name in PEER_CLASSES:
            if d.class_code >> shift == value:
                return name
    return None


def is_peer_device(d: Device) -> bool:
    """Whether the default view shows the function: a GPU, NIC, NVMe, accelerator or p2pmem provider."""
    return peer_class(d) is not None


def aliases(topo: Topology) -> dict[str, str]:
    """``{bdf: alias}`` for every function people peer: the prefix and its index in BDF order."""
    seen: dict[str, int] = {}
    out: dict[str, str] = {}
    for d in sorted(topo.devices, key=lambda x: bdf_key(x.bdf)):
        prefix = peer_class(d)
        if prefix is None:
            continue
        out[d.bdf] = f"{prefix}{seen.get(prefix, 0)}"
        seen[prefix] = seen.get(prefix, 0) + 1
    return out


def short_bdf(bdf: str) -> str:
    """``0000:03:00.0`` as ``03:00.0`` (domain 0 dropped), any other domain kept."""
    return bdf[5:] if bdf.startswith("0000:") else bdf


def labels(topo: Topology) -> dict[str, str]:
    """``{bdf: label}`` for every function: its alias (``GPU0``), else ``dN`` (index among the endpoints,
    the list ``matrix --all-functions`` shows) or ``bN`` (index among the bridges): what the matrix prints
    and lookup() takes back."""
    out = aliases(topo)
    for k, d in enumerate(topo.endpoints):
        out.setdefault(d.bdf, f"d{k}")
    for k, d in enumerate(x for x in topo.devices if x.is_bridge):
        out.setdefault(d.bdf, f"b{k}")
    return out


def hidden_kind(d: Device) -> str:
    """What the summary calls a function the default view leaves out."""
    if d.is_bridge:
        return "bridges"
    peer = class_name(d)
    if peer is not None:  # left out by --class
        return {"gpu": "GPUs", "nic": "NICs", "nvme": "NVMe", "accel": "accelerators"}[peer]
    return HIDDEN_KINDS.get(d.class_code >> 16, "other")


@dataclass(frozen=True, slots=True)
class Selection:
    """The functions a command shows (BDF order) and the ones its filter left out."""

    bdfs: tuple[str, ...]
    hidden: tuple[str, ...] = ()
    filtered: bool = False  # True when the default filter applied (the summary then names --all-functions)
    fallback: bool = False  # True when the default filter kept fewer than two and every function is shown

    def summary(self, topo: Topology) -> str | None:
        """``"41 functions hidden: 30 uncore, 8 chipset, 3 bridges; --all-functions shows them"``, the
        fallback's note, or None."""
        if self.fallback:
            return "fewer than two GPUs, NICs, NVMe or accelerators here: every function is shown"
        if not self.hidden:
            return None
        return hidden_summary(topo, self.hidden, hint=self.filtered)


def hidden_summary(topo: Topology, hidden: Iterable[str], hint: bool = True) -> str:
    """One line saying how many functions are left out and of which kinds, most numerous first."""
    kinds: dict[str, int] = {}
    total = 0
    for b in hidden:
        k = hidden_kind(topo[b])
        kinds[k] = kinds.get(k, 0) + 1
        total += 1
    parts = ", ".join(f"{n} {k[:-1] if n == 1 and k.endswith('s') else k}"
                      for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    noun = "function" if total == 1 else "functions"
    return f"{total} {noun} hidden: {parts}" + (f"; --all-functions shows {'it' if total == 1 else 'them'}"
                                                 if hint else "")


def parse_classes(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"gpu,nic"`` (or a list) as class names; InputError naming the known ones on a miss."""
    items = text.split(",") if isinstance(text, str) else [x for t in text for x in t.split(",")]
    out = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        if name in ("gpus", "nics", "accels"):
            name = name[:-1]
        if name not in CLASS_NAMES:
            import difflib  # only for a miss's "did you mean"

            near = difflib.get_close_matches(name, CLASS_NAMES, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise InputError(f"unknown device class {raw.strip()!r} (known: {', '.join(CLASS_NAMES)}){hint}")
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"--class needs one or more of {', '.join(CLASS_NAMES)}")
    return tuple(out)


def select_devices(
    topo: Topology,
    *,
    all_functions: bool = False,
    include_bridges: bool = False,
    classes: Sequence[str] | str | None = None,
    devices: Sequence[str] | str | None = None,
) -> Selection:
    """The functions a command shows: ``devices`` (any names lookup() takes) when given, else those of
    ``classes``, else every candidate with ``all_functions``, else the devices people peer. Candidates are
    the endpoints (and bridges with ``include_bridges``). When the filter keeps fewer than two (no pair to
    show), every candidate."""
    candidates = [d for d in topo.devices if include_bridges or not d.is_bridge]
    if devices is not None:
        names = devices.split(",") if isinstance(devices, str) else [x for t in devices for x in t.split(",")]
        picked: list[str] = []
        for name in (n.strip() for n in names):
            if name:
                b = lookup(topo, name).bdf
                if b not in picked:
                    picked.append(b)
        if not picked:
            raise InputError("--devices needs one or more device names")
        return Selection(tuple(sorted(picked, key=bdf_key)))
    if classes is not None:
        wanted = set(parse_classes(classes))
        keep = [d.bdf for d in candidates if class_name(d) in wanted]
        kept_cls = set(keep)
        hidden = [d.bdf for d in candidates if d.bdf not in kept_cls]
        return Selection(tuple(keep), tuple(hidden), filtered=False)
    if all_functions:
        return Selection(tuple(d.bdf for d in candidates))
    keep = [d.bdf for d in candidates if is_peer_device(d)]
    if len(keep) < 2:
        return Selection(tuple(d.bdf for d in candidates), fallback=True)
    kept = set(keep)
    return Selection(tuple(keep), tuple(d.bdf for d in candidates if d.bdf not in kept), filtered=True)


def _normal_bdf(topo: Topology, name: str) -> str | None:
    """A short or full BDF (``3:0.0``, ``03:00.0``, ``0:3:0.0``, ``0000:03:00.0``) as the machine's BDF."""
    m = SHORT_BDF_RE.match(name.strip())
    if not m:
        return None
    bus, dev, fn = int(m["bus"], 16), int(m["dev"], 16), int(m["fn"])
    if m["dom"] is not None:
        dom = int(m["dom"], 16)
        hits = [d.bdf for d in topo.devices if (d.domain, d.bus, d.slot, d.func) == (dom, bus, dev, fn)]
    else:
        hits = [d.bdf for d in topo.devices if (d.bus, d.slot, d.func) == (bus, dev, fn)]
        if len(hits) > 1:
            zero = [b for b in hits if topo[b].domain == 0]
            hits = zero if len(zero) == 1 else hits
    return hits[0] if len(hits) == 1 else None


def names_of(topo: Topology, d: Device, alias_map: dict[str, str] | None = None) -> list[str]:
    """Every name lookup() accepts for ``d`` (full and short BDF, alias, OS names)."""
    alias_map = aliases(topo) if alias_map is None else alias_map
    out = [d.bdf, short_bdf(d.bdf)]
    if d.bdf in alias_map:
        out.append(alias_map[d.bdf])
    out.extend(getattr(d, "os_names", ()) or ())
    return out


def lookup(topo: Topology, name: str, order: Sequence[str] | None = None) -> Device:
    """The function a user named: alias (``GPU0``, any case), ``dN`` (index into ``order``, by default the
    machine's endpoints: the matrix's labels for functions without an alias), a short or full BDF, or an OS
    name (``mlx5_0``, ``eth0``, ``nvme0n1``). InputError with "did you mean" when none or several match."""
    text = name.strip()
    if text in topo.index:
        return topo[text]
    alias_map = aliases(topo)
    upper = text.upper()
    for bdf, alias in alias_map.items():
        if alias == upper:
            return topo[bdf]
    m = DN_RE.match(text)
    if m:
        kind = m["kind"].lower()
        if kind == "b":
            seq = [d.bdf for d in topo.devices if d.is_bridge]
        else:
            seq = list(order) if order is not None else [d.bdf for d in topo.endpoints]
        k = int(m["n"])
        if k < len(seq):
            return topo[seq[k]]
        have = f"{kind}0..{kind}{len(seq) - 1}" if seq else f"no {kind}N"
        raise InputError(f"unknown device {text!r} in machine {topo.name}: the list has {have}")
    found = _normal_bdf(topo, text)
    if found is not None:
        return topo[found]
    os_hits = [d for d in topo.devices if text in (getattr(d, "os_names", ()) or ())]
    if not os_hits:
        ns = NVME_NS_RE.match(text)
        if ns:
            os_hits = [d for d in topo.devices if ns["ctrl"] in (getattr(d, "os_names", ()) or ())]
    if len(os_hits) == 1:
        return os_hits[0]
    try:
        return topo.resolve(text)  # the older suffix form (``3:00.0``) keeps working
    except KeyError:
        pass
    raise InputError(f"unknown device {text!r} in machine {topo.name}" + did_you_mean(topo, text, alias_map))


def did_you_mean(topo: Topology, text: str, alias_map: dict[str, str] | None = None) -> str:
    """``"; did you mean GPU0 (0000:05:00.0)?"`` for the names nearest ``text``, or ``""``."""
    alias_map = aliases(topo) if alias_map is None else alias_map
    candidates: dict[str, str] = {}
    for d in topo.devices:
        for n in names_of(topo, d, alias_map):
            candidates.setdefault(n.lower(), n)
    import difflib

    near = difflib.get_close_matches(text.lower(), list(candidates), n=3, cutoff=0.6)
    if not near:
        if alias_map:
            listed = ", ".join(sorted(alias_map.values(), key=_alias_key)[:8])
            return f"; known names include {listed}"
        return ""
    shown = []
    for k in near:
        n = candidates[k]
        hit = topo[n] if n in topo.index else lookup_quiet(topo, n)
        shown.append(n if hit is None or n == hit.bdf else f"{n} ({hit.bdf})")
    return "; did you mean " + ", ".join(shown) + "?"


def lookup_quiet(topo: Topology, name: str) -> Device | None:
    """lookup() returning None instead of raising."""
    try:
        return lookup(topo, name)
    except InputError:
        return None


def _alias_key(alias: str) -> tuple[str, int]:
    m = re.match(r"^([A-Z]+)(\d+)$", alias)
    return (m[1], int(m[2])) if m else (alias, 0)


__all__ = [
    "CLASS_NAMES",
    "PEER_CLASSES",
    "Selection",
    "aliases",
    "bdf_key",
    "class_name",
    "did_you_mean",
    "hidden_kind",
    "hidden_summary",
    "is_peer_device",
    "labels",
    "lookup",
    "lookup_quiet",
    "names_of",
    "parse_classes",
    "peer_class",
    "select_devices",
    "short_bdf",
]
