"""Across a fleet: groups of machines sharing a topology fingerprint, the outliers of each group, the
top causes; the ``p2pdma.fleet/1`` JSON document and the text table.

Everything here is a pure function of the sorted per-machine rows, so every engine (serial, process
pool, Dask) gives the same document.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2pdma.fleet.analyse import MAP_TYPES, MachineResult, cause_text

FLEET_SCHEMA = "p2pdma.fleet/1"
MACHINE_SCHEMA = "p2pdma.fleet-machine/1"  # one line of ``fleet --out FILE.jsonl``
TOP_CAUSES_SHOWN = 10
GROUP_MEMBERS_SHOWN = 6


@dataclass(frozen=True, slots=True)
class Group:
    """Machines with one topology fingerprint; ``reference`` holds the summary most of them share."""

    fingerprint: str
    machines: tuple[str, ...]
    reference: str


@dataclass(frozen=True, slots=True)
class Outlier:
    """A machine whose verdict summary differs from its group's reference machine."""

    machine: str
    fingerprint: str
    reference: str
    differences: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CauseTotal:
    """One cause across the fleet: on how many machines, for how many ordered pairs in all."""

    code: str
    machines: int
    pairs: int


@dataclass(frozen=True, slots=True)
class FleetReport:
    """The whole fleet: rows sorted by name then source, and what they add up to."""

    profile: str
    machines: tuple[MachineResult, ...]
    groups: tuple[Group, ...]
    outliers: tuple[Outlier, ...]
    causes: tuple[CauseTotal, ...]

    @property
    def failed(self) -> int:
        return sum(1 for m in self.machines if not m.ok)


def sort_rows(rows: Sequence[MachineResult]) -> list[MachineResult]:
    """The one order every engine's rows are put in."""
    return sorted(rows, key=lambda r: (r.name, r.source))


def _differences(m: MachineResult, ref: MachineResult) -> tuple[str, ...]:
    out: list[str] = []
    for label, a, b in zip(MAP_TYPES, m.pairs, ref.pairs, strict=True):
        if a != b:
            out.append(f"{label} {a} (reference {b})")
    if m.uncertain != ref.uncertain:
        out.append(f"uncertain {m.uncertain} (reference {ref.uncertain})")
    mine, theirs = dict(m.causes), dict(ref.causes)
    for code in sorted(set(mine) | set(theirs)):
        if mine.get(code, 0) != theirs.get(code, 0):
            out.append(f"{code} {mine.get(code, 0)} pairs (reference {theirs.get(code, 0)})")
    return tuple(out)


def build_report(rows: Sequence[MachineResult], profile: str) -> FleetReport:
    """Group the ok rows by fingerprint, find each group's reference summary (the one most members
    share; on a tie, the one whose first machine name sorts first) and the machines that differ."""
    ordered = sort_rows(rows)
    by_fp: dict[str, list[MachineResult]] = defaultdict(list)
    for r in ordered:
        if r.ok and r.fingerprint is not None:
            by_fp[r.fingerprint].append(r)
    groups: list[Group] = []
    outliers: list[Outlier] = []
    for fp, members in by_fp.items():
        tally = Counter(m.summary_key() for m in members)
        first_name: dict[tuple[object, ...], str] = {}
        for m in members:
            first_name.setdefault(m.summary_key(), m.name)
        best = min(tally, key=lambda k: (-tally[k], first_name[k]))
        ref = next(m for m in members if m.summary_key() == best)
        groups.append(Group(fingerprint=fp, machines=tuple(m.name for m in members), reference=ref.name))
        for m in members:
            if m.summary_key() != best:
                outliers.append(Outlier(m.name, fp, ref.name, _differences(m, ref)))
    groups.sort(key=lambda g: (-len(g.machines), g.fingerprint))
    outliers.sort(key=lambda o: (o.machine, o.fingerprint))
    machines_per: Counter[str] = Counter()
    pairs_per: Counter[str] = Counter()
    for r in ordered:
        for code, count in r.causes:
            machines_per[code] += 1
            pairs_per[code] += count
    causes = sorted(
        (CauseTotal(code, machines_per[code], pairs_per[code]) for code in machines_per),
        key=lambda c: (-c.machines, -c.pairs, c.code),
    )
    return FleetReport(profile, tuple(ordered), tuple(groups), tuple(outliers), tuple(causes))


def distinct_counts(r: MachineResult) -> dict[str, int] | None:
    """The machine's distinct ordered pairs (provider != client) per map type, their total, the
    uncertain ones and the self pairs apart: the keys and values of report.documents.pair_counts();
    None for a failed row."""
    if not r.ok:
        return None
    out = dict(zip(MAP_TYPES, r.distinct, strict=True))
    out["pairs"] = r.endpoints * (r.endpoints - 1)
    out["uncertain"] = r.distinct_uncertain
    out["self"] = r.endpoints
    return out


def machine_json(r: MachineResult) -> dict[str, Any]:
    """One ``machines`` entry of ``p2pdma.fleet/1``: ``pairs``, ``uncertain`` and ``causes`` count
    every ordered pair, self pairs included (as /1 always did); the additive ``counts`` and
    ``distinct_causes`` count distinct ordered pairs only."""
    return {
        "name": r.name,
        "source": r.source,
        "status": r.status,
        "reason": r.reason,
        "functions": r.functions,
        "endpoints": r.endpoints,
        "pairs": dict(zip(MAP_TYPES, r.pairs, strict=True)),
        "uncertain": r.uncertain,
        "fingerprint": r.fingerprint,
        "causes": dict(r.causes),
        "warnings": r.warnings,
        "kernel_release": r.kernel_release,
        "counts": distinct_counts(r),
        "distinct_causes": dict(r.distinct_causes),
    }


def machine_line(r: MachineResult, profile: str) -> dict[str, Any]:
    """One ``p2pdma.fleet-machine/1`` record (a line of ``--out FILE.jsonl``): the machine, its
    source, the kernel profile, distinct-pair ``counts`` (as pair_counts()) and ``causes`` (distinct
    pairs), the topology fingerprint, and ``errors`` (the one-line reason of a failed row)."""
    return {
        "schema": MACHINE_SCHEMA,
        "name": r.name,
        "source": r.source,
        "kernel": profile,
        "status": r.status,
        "functions": r.functions,
        "endpoints": r.endpoints,
        "counts": distinct_counts(r),
        "causes": dict(r.distinct_causes),
        "fingerprint": r.fingerprint,
        "kernel_release": r.kernel_release,
        "warnings": r.warnings,
        "errors": [r.reason] if r.reason else [],
    }


def jsonl_text(rep: FleetReport) -> str:
    """Every machine's p2pdma.fleet-machine/1 record, one JSON line each, sorted by machine name."""
    return "".join(json.dumps(machine_line(r, rep.profile)) + "\n" for r in rep.machines)


def report_json(rep: FleetReport) -> dict[str, Any]:
    """The ``p2pdma.fleet/1`` document (no timings or engine: identical for every engine)."""
    return {
        "schema": FLEET_SCHEMA,
        "kernel": rep.profile,
        "summary": {
            "machines": len(rep.machines),
            "ok": len(rep.machines) - rep.failed,
            "failed": rep.failed,
            "groups": len(rep.groups),
            "outliers": len(rep.outliers),
        },
        "machines": [machine_json(r) for r in rep.machines],
        "groups": [
            {"fingerprint": g.fingerprint, "machines": list(g.machines), "reference": g.reference}
            for g in rep.groups
        ],
        "outliers": [
            {"machine": o.machine, "fingerprint": o.fingerprint, "reference": o.reference,
             "differences": list(o.differences)}
            for o in rep.outliers
        ],
        "causes": [
            {"code": c.code, "text": cause_text(c.code), "machines": c.machines, "pairs": c.pairs}
            for c in rep.causes
        ],
    }


def summary_line(rep: FleetReport) -> str:
    ok = len(rep.machines) - rep.failed
    return (
        f"{len(rep.machines)} machines: {ok} ok, {rep.failed} failed; {len(rep.groups)} topology groups,"
        f" {len(rep.outliers)} outliers"
    )


def render_text(rep: FleetReport) -> str:
    """The fleet as tables: per machine (distinct ordered pairs, as every command counts them),
    groups, outliers, top causes, and a summary line."""
    width = max([7, *(len(r.name) for r in rep.machines)])
    lines = [
        f"{'machine':<{width}}  {'status':<6} {'funcs':>5} {'endp':>5} {'BUS_ADDR':>9} {'THRU_HB':>9}"
        f" {'NOT_SUPP':>9} {'uncertain':>9}  fingerprint"
    ]
    for r in rep.machines:
        if r.ok:
            b, t, n = r.distinct
            lines.append(
                f"{r.name:<{width}}  {'ok':<6} {r.functions:>5} {r.endpoints:>5} {b:>9} {t:>9} {n:>9}"
                f" {r.distinct_uncertain:>9}  {r.fingerprint}"
            )
        else:
            lines.append(f"{r.name:<{width}}  failed: {r.reason}")
    lines.append("")
    lines.append(f"topology groups ({len(rep.groups)}):")
    for g in rep.groups:
        shown = ", ".join(g.machines[:GROUP_MEMBERS_SHOWN])
        more = f", ... ({len(g.machines) - GROUP_MEMBERS_SHOWN} more)" if len(g.machines) > GROUP_MEMBERS_SHOWN else ""
        lines.append(f"  {g.fingerprint}  {len(g.machines):>5} machines  reference {g.reference}: {shown}{more}")
    lines.append("")
    lines.append(f"outliers ({len(rep.outliers)}):")
    for o in rep.outliers:
        lines.append(f"  {o.machine} (group {o.fingerprint}, reference {o.reference}): {'; '.join(o.differences)}")
    lines.append("")
    lines.append("top causes (machines, ordered pairs):")
    for c in rep.causes[:TOP_CAUSES_SHOWN]:
        lines.append(f"  {c.machines:>6} {c.pairs:>10}  {cause_text(c.code)}  [{c.code}]")
    if len(rep.causes) > TOP_CAUSES_SHOWN:
        lines.append(f"  ... and {len(rep.causes) - TOP_CAUSES_SHOWN} more (--json lists all)")
    lines.append("")
    lines.append(summary_line(rep))
    return "\n".join(lines)
