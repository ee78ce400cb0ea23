"""One machine of a fleet: load its capture (or hwloc XML), compute the verdict matrix, and reduce it
to a summary row: map type counts, uncertain pairs, cause categories, topology fingerprint.

``analyse_machine()`` never raises for a bad input: a corrupt or hostile capture becomes a
``failed`` row carrying the one-line reason, so a fleet run goes on.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from p2pdma.p2p import platform
from p2pdma.p2p.acs import AcsState
from p2pdma.p2p.decide import MapType, calc_map_type_and_dist
from p2pdma.p2p.kernels import REQ_SAME_HOST_BRIDGE
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci.topology import Device, Topology

MAP_TYPES = ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED")
FINGERPRINT_HEX = 16


@dataclass(frozen=True, slots=True)
class MachineResult:
    """One fleet row. ``causes`` holds (cause code, ordered pairs it applies to), sorted by code."""

    name: str
    source: str
    status: str  # "ok" or "failed"
    reason: str | None = None
    functions: int = 0
    endpoints: int = 0
    pairs: tuple[int, int, int] = (0, 0, 0)  # BUS_ADDR, THRU_HOST_BRIDGE, NOT_SUPPORTED
    uncertain: int = 0
    fingerprint: str | None = None
    causes: tuple[tuple[str, int], ...] = ()
    warnings: int = 0
    kernel_release: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary_key(self) -> tuple[tuple[int, int, int], int, tuple[tuple[str, int], ...]]:
        """What must agree between machines of one fingerprint group: counts, uncertainty, causes."""
        return (self.pairs, self.uncertain, self.causes)


def cause_text(code: str) -> str:
    """A human sentence for a cause code (``acs-redirect:switch-downstream``, ``hb-not-whitelisted:8086:1234``)."""
    kind, _, arg = code.partition(":")
    texts = {
        "acs-redirect": f"ACS redirect (RR/CR) at {arg} ports sends peer requests to the root complex",
        "acs-blocked": f"ACS Egress Control blocks peer requests at {arg} ports",
        "no-common": (
            "no common upstream bridge: different host bridges"
            if arg == "host-bridges"
            else "no common upstream bridge: different root ports of one host bridge"
        ),
        "hb-not-whitelisted": f"host bridge {arg} is not in the P2PDMA whitelist",
        "hb-same-host-bridge-only": f"host bridge {arg} is whitelisted only within one host bridge",
        "hb-no-device": "host bridge has no 00.0 device or Root Port first on its root bus",
        "hb-refused": "not allowed through the host bridge",
        "acs-unknown": "ACS unknown (config space unreadable or not in the source): verdict uncertain",
    }
    return texts.get(kind, code)


def _port_kind(dev: Device) -> str:
    if dev.port_type_name:
        return dev.port_type_name
    return "bridge" if dev.is_bridge else "endpoint"


def hb_refusal_codes(topo: Topology, provider_hb: str, client_hb: str) -> list[str]:
    """Why host_bridge_whitelist() refuses a pair between these host bridges, as distinct cause
    codes (the facts platform.host_bridge_reason() words)."""
    codes: list[str] = []
    names = list(dict.fromkeys([provider_hb, client_hb]))
    same = len(names) == 1
    for name in names:
        hb = topo.host_bridge(name)
        if hb.host_dev is None:
            codes.append("hb-no-device")
            continue
        dev = topo[hb.host_dev]
        ident = f"{dev.vendor:04x}:{dev.device:04x}"
        entry = platform.whitelist_entry(dev)
        if entry is None:
            codes.append(f"hb-not-whitelisted:{ident}")
        elif entry.flags & REQ_SAME_HOST_BRIDGE and not same:
            codes.append(f"hb-same-host-bridge-only:{ident}")
    return list(dict.fromkeys(codes)) or ["hb-refused"]


def _signature(dev: Device) -> tuple[object, ...]:
    """Everything of a function that calc_map_type_and_dist() looks at, except its identity: two
    functions with equal signatures get the same verdict categories against any third one."""
    acs = None if dev.acs is None else (dev.acs.cap, dev.acs.ctrl, dev.acs.egress_vector)
    return (
        dev.parent,
        dev.host_bridge if dev.parent is None else None,
        acs,
        dev.acs_known,
        dev.port_type,
        dev.port_type_inferred,
        dev.port_number,
        dev.is_bridge,
    )


def cause_counts(topo: Topology, mat: Matrix) -> dict[str, int]:
    """Cause code -> number of ordered pairs it applies to (pairs that are not BUS_ADDR, and
    uncertain pairs), for every pair of ``mat``.

    Pairs without a common upstream bridge are classified from the matrix alone (their distance
    is the sum of both chain lengths); for ACS-decided pairs calc_map_type_and_dist() runs once per
    class of equivalent pairs (see _signature()).
    """
    n = len(mat.bdfs)
    out: Counter[str] = Counter()
    if n == 0:
        return {}
    devs = [topo[b] for b in mat.bdfs]
    depth = np.array([len(topo.chain(d.bdf)) for d in devs], dtype=np.int64)
    mt = mat.map_type
    no_common = mat.distance == depth[:, None] + depth[None, :]
    not_bus = mt != MapType.BUS_ADDR.value
    hb_of = np.array([topo.hb_index[d.host_bridge] for d in devs], dtype=np.int64)
    same_hb = hb_of[:, None] == hb_of[None, :]
    out["acs-unknown"] = int((~mat.certain).sum())
    nc = no_common & not_bus
    out["no-common:host-bridges"] = int((nc & ~same_hb).sum())
    out["no-common:root-ports"] = int((nc & same_hb).sum())

    nhb = len(topo.host_bridges)
    ns = mt == MapType.NOT_SUPPORTED.value
    if ns.any():
        keys = (hb_of[:, None] * nhb + hb_of[None, :])[ns]
        for key, count in zip(*np.unique(keys, return_counts=True), strict=True):
            a, b = divmod(int(key), nhb)
            for code in hb_refusal_codes(topo, topo.host_bridges[a].name, topo.host_bridges[b].name):
                out[code] += int(count)

    acs_mask = ~no_common & not_bus
    if acs_mask.any():
        sig_ids: dict[tuple[object, ...], int] = {}
        sig = np.array([sig_ids.setdefault(_signature(d), len(sig_ids)) for d in devs], dtype=np.int64)
        s = len(sig_ids)
        eye = np.eye(n, dtype=np.int64)
        keys2 = (sig[:, None] * s + sig[None, :]) * 2 + eye
        flat = np.flatnonzero(acs_mask)
        _, first, counts = np.unique(keys2.ravel()[flat], return_index=True, return_counts=True)
        for idx, count in zip(first, counts, strict=True):
            i, j = divmod(int(flat[idx]), n)
            v = calc_map_type_and_dist(topo, devs[i], devs[j], mat.profile)
            states = {p.bdf: p.state for p in v.ports}
            codes = set()
            for bdf in v.acs_ports:
                word = "acs-redirect" if states.get(bdf) == AcsState.REDIRECT else "acs-blocked"
                codes.add(f"{word}:{_port_kind(topo[bdf])}")
            for code in codes:
                out[code] += int(count)
    return {k: v for k, v in out.items() if v}


def topology_fingerprint(topo: Topology) -> str:
    """A hash of the tree's shape, independent of bus numbering and listing order.

    Covers per function: vendor:device, class, header kind, PCIe port type, VF or not, and the
    nesting (which function hangs below which bridge, grouped by host bridge), plus the CPU vendor
    and family. Leaves out: BDFs, ACS settings (so an ACS difference shows as an outlier), link
    speed/width, BARs, NUMA nodes, IOMMU groups, drivers, the kernel release.
    """
    children: dict[str | None, list[str]] = {}
    for d in topo.devices:
        key = d.parent if d.parent is not None else f"hb:{d.host_bridge}"
        children.setdefault(key, []).append(d.bdf)
    depth = {d.bdf: len(topo.chain(d.bdf)) for d in topo.devices}
    digest: dict[str, str] = {}
    for d in sorted(topo.devices, key=lambda x: -depth[x.bdf]):
        label = (
            f"{d.vendor:04x}:{d.device:04x}/{d.class_code:06x}/{d.kind}/{d.port_type_name or '-'}"
            f"{'/vf' if d.is_vf else ''}"
        )
        kids = sorted(digest[c] for c in children.get(d.bdf, ()))
        digest[d.bdf] = hashlib.sha256((label + "(" + ",".join(kids) + ")").encode()).hexdigest()
    hbs = sorted(
        "hb(" + ",".join(sorted(digest[b] for b in children.get(f"hb:{h.name}", ()))) + ")"
        for h in topo.host_bridges
    )
    cpu = f"{topo.cpu.vendor}/{topo.cpu.family}" if topo.cpu else "-"
    return hashlib.sha256(f"{cpu}|{'|'.join(hbs)}".encode()).hexdigest()[:FINGERPRINT_HEX]


def scratch_dir() -> str | None:
    """Where workers unpack captures: ``$TMPDIR`` when set, else ``/dev/shm`` (tmpfs: unpacking is
    metadata heavy) when writable, else tempfile's default (None)."""
    shm = "/dev/shm"
    if os.environ.get("TMPDIR"):
        return None
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def load_machine(name: str, source: str, data: bytes | None = None, tmpdir: str | None = None) -> Topology:
    """A fleet member's topology: hwloc XML by its suffix, otherwise a capture archive unpacked
    under ``tmpdir`` (default: scratch_dir())."""
    if source.lower().endswith(".xml"):
        from p2pdma.sources.hwloc import MAX_XML, parse_hwloc, read_hwloc

        if data is None:
            return read_hwloc(source)
        if len(data) > MAX_XML:
            from p2pdma.errors import SourceError

            raise SourceError(f"{source}: larger than {MAX_XML} bytes")
        return parse_hwloc(data, name=name, where=source)
    from p2pdma.sources.capture import load_capture

    return load_capture(source, data=data, name=name, tmpdir=tmpdir or scratch_dir())


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    from p2pdma.errors import P2pdmaError

    if not isinstance(exc, P2pdmaError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:300]


def analyse_topology(name: str, source: str, topo: Topology, profile: str) -> MachineResult:
    """The summary row of a loaded machine."""
    mat = compute_matrix(topo, profile)
    counts = mat.counts()
    causes = cause_counts(topo, mat)
    return MachineResult(
        name=name,
        source=source,
        status="ok",
        functions=len(topo.devices),
        endpoints=len(mat.bdfs),
        pairs=(counts["BUS_ADDR"], counts["THRU_HOST_BRIDGE"], counts["NOT_SUPPORTED"]),
        uncertain=int((~mat.certain).sum()),
        fingerprint=topology_fingerprint(topo),
        causes=tuple(sorted(causes.items())),
        warnings=len(topo.warnings),
        kernel_release=topo.kernel_release,
    )


def analyse_machine(
    name: str, source: str, profile: str, data: bytes | None = None, tmpdir: str | None = None
) -> MachineResult:
    """Load and analyse one machine; any failure becomes a ``failed`` row with a one-line reason.

    Runs in pool or Dask workers: module-level, arguments and result picklable.
    """
    try:
        topo = load_machine(name, source, data, tmpdir)
        return analyse_topology(name, source, topo, profile)
    except Exception as exc:  # a fleet row fails alone, whatever the cause
        return MachineResult(name=name, source=source, status="failed", reason=_one_line(exc))
