"""Builders of the JSON (and CSV) documents the commands print: ``p2pdma.matrix/2`` with each distinct
reason once, the pair table as CSV, ``p2pdma.explain/1``, the common head (``schema``, ``tool_version``,
``kernel``, ``machine``), the richer device object and the one pair count every command shows.

Counts are of distinct ordered pairs (provider != client); the self pairs are reported apart. The
``p2pdma.matrix/1`` document stays as it was (cli/matrix.py); the new fields live in ``/2``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from p2pdma import __version__
from p2pdma.p2p.decide import MapType
from p2pdma.pci import names

if TYPE_CHECKING:
    from p2pdma.p2p.decide import Verdict
    from p2pdma.p2p.matrix import Matrix
    from p2pdma.p2p.small import SmallMatrix
    from p2pdma.pci.names import Selection
    from p2pdma.pci.topology import Device, Topology

MATRIX2_SCHEMA = "p2pdma.matrix/2"
EXPLAIN_SCHEMA = "p2pdma.explain/1"
TOOL_VERSION = __version__
MAP_TYPE_NAMES = ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED")
CSV_COLUMNS = (
    "provider", "provider_alias", "client", "client_alias", "map_type", "distance", "certain", "reason", "fix",
)


def pair_counts(mat: Matrix | SmallMatrix) -> dict[str, int]:
    """The one pair count of matrix, fix, report and fleet: distinct ordered pairs (provider != client) per
    map type, plus ``pairs`` (their total), ``uncertain`` (of them) and ``self`` (the diagonal, apart)."""
    return mat.pair_counts()


def uncertain_why(mat: Matrix | SmallMatrix) -> dict[str, int]:
    """The distinct uncertain pairs by the fact the input lacked: ``acs`` (a port's ACS control below
    the common bridge was unreadable) or ``host_bridge`` (the host bridge device the whitelist reads
    is not in the input); a pair with a common bridge is uncertain only for the first reason."""
    return mat.uncertain_why()


def head(schema: str, topo: Topology, profile: str | None) -> dict[str, Any]:
    """The fields every document starts with: ``schema``, ``tool_version``, ``kernel``, ``machine``."""
    return {"schema": schema, "tool_version": TOOL_VERSION, "kernel": profile, "machine": topo.name}


def stamp(doc: dict[str, Any], topo: Topology | None = None, profile: str | None = None) -> dict[str, Any]:
    """``doc`` with ``tool_version`` (and ``kernel``/``machine`` when missing and given) right after
    ``schema``, every existing key kept in its order: the additive upgrade of an existing document."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        out[k] = v
        if k == "schema":
            out["tool_version"] = TOOL_VERSION
            if "kernel" not in doc and profile is not None:
                out["kernel"] = profile
            if "machine" not in doc and topo is not None:
                out["machine"] = topo.name
    return out


def link_json(d: Device) -> dict[str, Any] | None:
    """The function's link: current and maximum speed (GT/s) and width, or None when unknown."""
    if not (d.cur_width or d.max_width or d.cur_speed or d.max_speed):
        return None
    return {"speed": d.cur_speed, "width": d.cur_width, "max_speed": d.max_speed, "max_width": d.max_width}


def device_doc(d: Device, alias_map: dict[str, str] | None = None) -> dict[str, Any]:
    """A function as ``/2`` documents list it: the ``/1`` fields plus alias, driver, OS names, link, NUMA
    node and local CPUs (None where the input does not say)."""
    numa = getattr(d, "numa_node", None)
    return {
        "bdf": d.bdf,
        "alias": (alias_map or {}).get(d.bdf),
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
        "numa_node": numa if numa is None or numa >= 0 else None,
        "local_cpulist": getattr(d, "local_cpulist", None),
        "driver": getattr(d, "driver", None),
        "os_names": list(getattr(d, "os_names", ()) or ()),
        "link": link_json(d),
    }


def selection_json(topo: Topology, sel: Selection | None) -> dict[str, Any]:
    """What the view shows and leaves out: ``filtered``, ``hidden`` (a count) and the summary line."""
    if sel is None:
        return {"filtered": False, "hidden": 0, "summary": None}
    return {"filtered": sel.filtered, "hidden": len(sel.hidden), "summary": sel.summary(topo)}


def _reason_key(v: Verdict) -> tuple[Any, ...]:
    return (v.reason, v.fix, tuple(v.acs_ports), tuple(v.unknown_ports), tuple(v.unknown), tuple(v.hints))


def matrix_document_v2(mat: Matrix, selection: Selection | None = None) -> dict[str, Any]:
    """The ``p2pdma.matrix/2`` document: devices with aliases, distinct-pair counts, each distinct reason
    once in ``reasons`` and every distinct ordered pair referring to it by index (self pairs left out)."""
    topo = mat.topo
    alias_map = names.aliases(topo)
    n = len(mat.bdfs)
    reasons: list[dict[str, Any]] = []
    index: dict[tuple[Any, ...], int] = {}
    pairs: list[dict[str, Any]] = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            v = mat.verdict(i, j)
            key = _reason_key(v)
            k = index.get(key)
            if k is None:
                k = index[key] = len(reasons)
                reasons.append({"reason": v.reason, "fix": v.fix, "acs_ports": list(v.acs_ports),
                                "unknown_ports": list(v.unknown_ports), "unknown": list(v.unknown),
                                "hints": list(v.hints)})
            pairs.append({"provider": v.provider, "client": v.client, "map_type": v.map_type.name,
                          "distance": v.distance, "certain": v.certain, "reason": k})
    doc = head(MATRIX2_SCHEMA, topo, mat.profile)
    doc.update({
        "devices": [device_doc(topo[b], alias_map) for b in mat.bdfs],
        "selection": selection_json(topo, selection),
        "counts": pair_counts(mat),
        "reasons": reasons,
        "pairs": pairs,
        "warnings": list(topo.warnings),
    })
    return doc


def write_matrix_document_v2(mat: Matrix, out: TextIO, selection: Selection | None = None,
                             extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Stream ``p2pdma.matrix/2`` to ``out``: the bytes of ``json.dumps(matrix_document_v2(...))`` (with
    ``extra`` applied to the document's head), but one pass over the verdicts keeps only a reason
    index per pair (4 bytes) and the distinct reasons, and the pairs are written as they are made."""
    import numpy as np

    topo = mat.topo
    alias_map = names.aliases(topo)
    n = len(mat.bdfs)
    reasons: list[dict[str, Any]] = []
    index: dict[tuple[Any, ...], int] = {}
    ridx = np.zeros((n, n), dtype=np.int32)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            v = mat.verdict(i, j)
            key = _reason_key(v)
            k = index.get(key)
            if k is None:
                k = index[key] = len(reasons)
                reasons.append({"reason": v.reason, "fix": v.fix, "acs_ports": list(v.acs_ports),
                                "unknown_ports": list(v.unknown_ports), "unknown": list(v.unknown),
                                "hints": list(v.hints)})
            ridx[i, j] = k
    doc = head(MATRIX2_SCHEMA, topo, mat.profile)
    doc.update({
        "devices": [device_doc(topo[b], alias_map) for b in mat.bdfs],
        "selection": selection_json(topo, selection),
        "counts": pair_counts(mat),
        "reasons": reasons,
    })
    if extra is not None:
        doc = extra(doc)
    out.write(json.dumps(doc)[:-1] + ', "pairs": [')
    type_name = {int(x.value): x.name for x in MapType}
    first = True
    for i in range(n):
        row = []
        for j in range(n):
            if i == j:
                continue
            row.append(json.dumps({"provider": mat.bdfs[i], "client": mat.bdfs[j],
                                   "map_type": type_name[int(mat.map_type[i, j])],
                                   "distance": int(mat.distance[i, j]), "certain": bool(mat.certain[i, j]),
                                   "reason": int(ridx[i, j])}))
        if row:
            out.write(("" if first else ", ") + ", ".join(row))
            first = False
    out.write('], "warnings": ' + json.dumps(list(topo.warnings)) + "}\n")


def pairs_csv(mat: Matrix) -> str:
    """The pair table as CSV (RFC 4180, a header row, one row per distinct ordered pair)."""
    topo = mat.topo
    alias_map = names.aliases(topo)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    n = len(mat.bdfs)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            v = mat.verdict(i, j)
            w.writerow([v.provider, alias_map.get(v.provider, ""), v.client, alias_map.get(v.client, ""),
                        v.map_type.name, v.distance, "true" if v.certain else "false", v.reason, v.fix or ""])
    return buf.getvalue()


def explain_document(
    topo: Topology, profile: str, v: Verdict, notes: Sequence[str] = (), nvlink: Any = None
) -> dict[str, Any]:
    """The ``p2pdma.explain/1`` document: the head, then every field ``explain --json`` printed so far
    (``to_json(with_path=True)``, ``nvlink``, ``notes``), then both devices in full."""
    alias_map = names.aliases(topo)
    doc = head(EXPLAIN_SCHEMA, topo, profile)
    doc.update(v.to_json(with_path=True))
    doc["nvlink"] = nvlink
    doc["notes"] = list(notes)
    doc["provider_device"] = device_doc(topo[v.provider], alias_map)
    doc["client_device"] = device_doc(topo[v.client], alias_map)
    return doc


def list_document(schema: str, key: str, items: Sequence[Any]) -> dict[str, Any]:
    """A ``--list --json`` document: ``schema``, ``tool_version`` and the items under ``key``."""
    return {"schema": schema, "tool_version": TOOL_VERSION, key: list(items)}


__all__ = [
    "CSV_COLUMNS",
    "EXPLAIN_SCHEMA",
    "MATRIX2_SCHEMA",
    "TOOL_VERSION",
    "device_doc",
    "explain_document",
    "head",
    "link_json",
    "list_document",
    "matrix_document_v2",
    "pair_counts",
    "pairs_csv",
    "selection_json",
    "stamp",
]
