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
import numpy.typing as npt

from p2pdma.p2p import platform
from p2pdma.p2p.acs import has_acs_redir
from p2pdma.p2p.decide import MapType
from p2pdma.p2p.kernels import REQ_SAME_HOST_BRIDGE
from p2pdma.p2p.matrix import Matrix, compute_matrix
from p2pdma.pci.topology import Device, Topology

MAP_TYPES = ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED")
FINGERPRINT_HEX = 16


@dataclass(frozen=True, slots=True)
class MachineResult:
    """One fleet row. ``causes`` holds (cause code, ordered pairs it applies to), sorted by code.

    ``pairs``, ``uncertain`` and ``causes`` count every ordered pair, the self pairs (provider ==
    client) included, as ``p2pdma.fleet/1`` always did; ``distinct``, ``distinct_uncertain`` and
    ``distinct_causes`` count distinct ordered pairs only, as report.documents.pair_counts() does.
    """

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
    distinct: tuple[int, int, int] = (0, 0, 0)
    distinct_uncertain: int = 0
    distinct_causes: tuple[tuple[str, int], ...] = ()

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


def _port_bits(topo: Topology) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Per function (topology order) a bit for the port kind when has_acs_redir() holds for it
    (pci_bridge_has_acs_redir() in drivers/pci/p2pdma.c, every kept tree), and the kinds by bit."""
    kinds: dict[str, int] = {}
    bits = np.zeros(len(topo.devices), dtype=np.int64)
    for k, d in enumerate(topo.devices):
        if has_acs_redir(d):
            bits[k] = 1 << kinds.setdefault(_port_kind(d), len(kinds))
    return bits, list(kinds)


BLOCK_CELLS = 1 << 21  # provider rows x clients x chain depth looked at in one numpy step


def _cause_tally(topo: Topology, mat: Matrix) -> tuple[Counter[str], Counter[str]]:
    """(every ordered pair, the self pairs alone): cause code -> pairs."""
    n = len(mat.bdfs)
    every: Counter[str] = Counter()
    diag: Counter[str] = Counter()
    if n == 0:
        return every, diag
    idx = [topo.index[b] for b in mat.bdfs]
    chains = [[topo.index[x.bdf] for x in reversed(topo.chain(b))] for b in mat.bdfs]  # top-down
    depth = np.array([len(c) for c in chains], dtype=np.int64)
    levels = int(depth.max())
    anc = np.empty((n, levels), dtype=np.int64)
    for i, c in enumerate(chains):
        anc[i, : len(c)] = c
        anc[i, len(c):] = -1 - i  # never equal to another row's padding
    bits, kinds = _port_bits(topo)
    # below[i, l]: the redirect kinds on i's chain from level l down to i itself (0 past its depth)
    below = np.zeros((n, levels + 1), dtype=np.int64)
    valid = np.arange(levels)[None, :] < depth[:, None]
    port = np.where(valid, bits[np.maximum(anc, 0)], 0)
    for lv in range(levels - 1, -1, -1):
        below[:, lv] = below[:, lv + 1] | port[:, lv]
    hb_of = np.array([topo.hb_index[topo.devices[k].host_bridge] for k in idx], dtype=np.int64)
    nhb = len(topo.host_bridges)
    hb_keys: Counter[int] = Counter()
    hb_diag: Counter[int] = Counter()
    kind_all = np.zeros(len(kinds), dtype=np.int64)
    bus = MapType.BUS_ADDR.value
    ns_val = MapType.NOT_SUPPORTED.value
    cols = np.arange(n)
    rows_per = max(1, BLOCK_CELLS // max(1, n * levels))
    for lo in range(0, n, rows_per):
        hi = min(n, lo + rows_per)
        # shared prefix length of the top-down chains: 0 = no common upstream bridge, else the
        # common bridge sits at level L-1 (the first provider-side bridge on the client's chain)
        same = anc[lo:hi, None, :] == anc[None, :, :]
        shared = np.cumprod(same, axis=2, dtype=np.int8).sum(axis=2, dtype=np.int64)
        shared = np.minimum(shared, np.minimum(depth[lo:hi, None], depth[None, :]))  # a self pair's padding
        mt = mat.map_type[lo:hi]
        not_bus = mt != bus
        common = shared > 0
        nc = ~common & not_bus
        same_hb = hb_of[lo:hi, None] == hb_of[None, :]
        every["no-common:host-bridges"] += int((nc & ~same_hb).sum())
        every["no-common:root-ports"] += int((nc & same_hb).sum())
        r = np.arange(lo, hi)[:, None]
        top = np.maximum(shared - 1, 0)
        # provider side up to and including the common bridge, client side below it
        mask = np.where(common & not_bus, below[r, top] | below[cols[None, :], shared], 0)
        for k in range(len(kinds)):
            kind_all[k] += int(((mask >> k) & 1).sum())
        ns = mt == ns_val
        if ns.any():
            keys = (hb_of[lo:hi, None] * nhb + hb_of[None, :])[ns]
            for key, count in zip(*np.unique(keys, return_counts=True), strict=True):
                hb_keys[int(key)] += int(count)
    for k, kind in enumerate(kinds):
        every[f"acs-redirect:{kind}"] += int(kind_all[k])
    every["acs-unknown"] = int((~mat.certain).sum())
    # the self pairs: the common bridge is the function itself, its own redirect bit alone
    d_mt = np.diagonal(mat.map_type)
    d_mask = np.where(d_mt != bus, below[cols, depth - 1], 0)
    for k, kind in enumerate(kinds):
        diag[f"acs-redirect:{kind}"] += int(((d_mask >> k) & 1).sum())
    diag["acs-unknown"] = int((~np.diagonal(mat.certain)).sum())
    for h in hb_of[d_mt == ns_val].tolist():
        hb_diag[h * (nhb + 1)] += 1
    for tally, out in ((hb_keys, every), (hb_diag, diag)):
        for key, count in tally.items():
            a, b = divmod(key, nhb)
            for code in hb_refusal_codes(topo, topo.host_bridges[a].name, topo.host_bridges[b].name):
                out[code] += count
    return every, diag


def cause_counts(topo: Topology, mat: Matrix, *, self_pairs: bool = True) -> dict[str, int]:
    """Cause code -> number of ordered pairs it applies to (pairs that are not BUS_ADDR, and
    uncertain pairs), for every pair of ``mat``; ``self_pairs=False`` counts distinct pairs only
    (provider != client, as report.documents.pair_counts() counts).

    Each pair's cause is what calc_map_type_and_dist() (drivers/pci/p2pdma.c, 6.1/7.2) reports for
    it, computed for all pairs at once: no common upstream bridge when the chains share no bridge
    (different host bridges, or root ports of one); otherwise the kinds of the ports on both chains
    up to the common bridge where pci_bridge_has_acs_redir() holds; a NOT_SUPPORTED pair adds why
    host_bridge_whitelist() refused its host bridges.
    """
    every, diag = _cause_tally(topo, mat)
    if not self_pairs:
        every.subtract(diag)
    return {k: v for k, v in every.items() if v}


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
    depth: dict[str, int] = {}  # len(topo.chain(bdf)), each function's walk stopping at a known one
    for d in topo.devices:
        walk: list[str] = []
        cur = d
        while cur.bdf not in depth:
            walk.append(cur.bdf)
            if cur.parent is None:
                level = 0
                break
            cur = topo[cur.parent]
        else:
            level = depth[cur.bdf]
        for b in reversed(walk):
            level += 1
            depth[b] = level
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
    """Where fleet.synth writes its scratch trees: ``$TMPDIR`` when set, else ``/dev/shm`` (tmpfs: unpacking is
    metadata heavy) when writable, else tempfile's default (None)."""
    shm = "/dev/shm"
    if os.environ.get("TMPDIR"):
        return None
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def load_machine(name: str, source: str, data: bytes | None = None, tmpdir: str | None = None) -> Topology:
    """A fleet member's topology through sources.open_machine(), the one door: hwloc XML by its suffix,
    otherwise a capture archive read in memory (``tmpdir`` is accepted and unused: nothing is unpacked)."""
    from p2pdma.sources import open_machine

    kind = "hwloc" if source.lower().endswith(".xml") else "root"
    if data is not None:
        return open_machine(kind, source, data=data, name=name)
    return open_machine(kind, source, name=name if kind == "root" else None)


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
    n = len(mat.bdfs)
    every, diag = _cause_tally(topo, mat)
    distinct = every.copy()
    distinct.subtract(diag)
    d_mt = np.diagonal(mat.map_type)
    all_counts = np.bincount(mat.map_type.ravel().astype(np.int64), minlength=max(MapType) + 1)
    self_counts = np.bincount(d_mt.astype(np.int64), minlength=max(MapType) + 1)
    values = [MapType[t].value for t in MAP_TYPES]
    uncertain = int(n * n - np.count_nonzero(mat.certain))
    self_uncertain = int(n - np.count_nonzero(np.diagonal(mat.certain)))
    b, t, ns = (int(all_counts[v]) for v in values)
    db, dt, dns = (int(all_counts[v] - self_counts[v]) for v in values)
    return MachineResult(
        name=name,
        source=source,
        status="ok",
        functions=len(topo.devices),
        endpoints=n,
        pairs=(b, t, ns),
        uncertain=uncertain,
        fingerprint=topology_fingerprint(topo),
        causes=tuple(sorted((k, v) for k, v in every.items() if v)),
        warnings=len(topo.warnings),
        kernel_release=topo.kernel_release,
        distinct=(db, dt, dns),
        distinct_uncertain=uncertain - self_uncertain,
        distinct_causes=tuple(sorted((k, v) for k, v in distinct.items() if v)),
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
