"""All-pairs verdicts, vectorised with numpy: the same answers as calc_map_type_and_dist() for every
ordered pair, computed from per-device prefix sums along the upstream chains.

The walk of calc_map_type_and_dist() reduces to: the length L of the common prefix of the two
chains (read top-down), the number of non-direct ports on the provider's chain up to and including
the common bridge and on the client's chain below it (pci_bridge_has_acs_redir() in every kept
profile); the profile only changes the host-bridge whitelist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2pdma.p2p.decide import DEFAULT_PROFILE, KERNEL_PROFILES, MapType, Verdict, calc_map_type_and_dist
from p2pdma.p2p.small import MAP_TYPES, host_bridge_permissions
from p2pdma.pci import config as cfg
from p2pdma.pci.topology import Topology

IntArr = npt.NDArray[np.int64]
BoolArr = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Matrix:
    """Map type, distance and certainty for every ordered (provider row, client column) pair."""

    topo: Topology
    profile: str
    bdfs: tuple[str, ...]
    map_type: npt.NDArray[np.int8]
    distance: npt.NDArray[np.int32]
    certain: BoolArr

    def verdict(self, i: int, j: int) -> Verdict:
        """The full per-pair verdict (reasons, ports, fix) for row ``i``, column ``j``."""
        return calc_map_type_and_dist(self.topo, self.bdfs[i], self.bdfs[j], self.profile)

    def cell(self, i: int, j: int) -> tuple[int, int, bool]:
        """(map type value, distance, certain) of row ``i``, column ``j`` (small.PairTable)."""
        return int(self.map_type[i, j]), int(self.distance[i, j]), bool(self.certain[i, j])

    def pair_counts(self) -> dict[str, int]:
        """Distinct ordered pairs per map type, their total, the uncertain ones, the self pairs apart
        (report.documents.pair_counts())."""
        n = len(self.bdfs)
        off = ~np.eye(n, dtype=bool)
        out = {m.name: int(((self.map_type == m.value) & off).sum()) for m in MAP_TYPES}
        out["pairs"] = n * (n - 1)
        out["uncertain"] = int(((~self.certain) & off).sum())
        out["self"] = n
        return out

    def uncertain_why(self) -> dict[str, int]:
        """The uncertain distinct pairs by the fact the input lacked (report.documents.uncertain_why())."""
        n = len(self.bdfs)
        depth = np.array([len(self.topo.chain(b)) for b in self.bdfs], dtype=np.int64)
        below_common = self.distance < depth[:, None] + depth[None, :]
        unc = ~self.certain & ~np.eye(n, dtype=bool)
        return {"acs": int((unc & below_common).sum()), "host_bridge": int((unc & ~below_common).sum())}

    def counts(self) -> dict[str, int]:
        """How many ordered pairs have each map type."""
        return {m.name: int((self.map_type == m.value).sum()) for m in MAP_TYPES}


def _chains(topo: Topology) -> tuple[IntArr, IntArr, IntArr]:
    """parent index, chain length and the top-down ancestor table (padded with unique negatives)."""
    m = len(topo.devices)
    parent = np.full(m, -1, dtype=np.int64)
    for k, d in enumerate(topo.devices):
        if d.parent is not None:
            parent[k] = topo.index[d.parent]
    depth = np.zeros(m, dtype=np.int64)
    order = _topo_order(parent)
    for k in order:
        depth[k] = 1 if parent[k] < 0 else depth[parent[k]] + 1
    dmax = int(depth.max()) if m else 1
    anc = -(np.arange(m, dtype=np.int64)[:, None] + 2) * np.ones((1, dmax + 1), dtype=np.int64)
    for k in range(m):
        cur = k
        lvl = int(depth[k]) - 1
        while cur >= 0:
            anc[k, lvl] = cur
            cur = int(parent[cur])
            lvl -= 1
    return parent, depth, anc


def _topo_order(parent: IntArr) -> list[int]:
    """Indices with every parent before its children."""
    m = len(parent)
    children: list[list[int]] = [[] for _ in range(m)]
    roots = []
    for k in range(m):
        if parent[k] < 0:
            roots.append(k)
        else:
            children[int(parent[k])].append(k)
    out: list[int] = []
    stack = list(reversed(roots))
    while stack:
        k = stack.pop()
        out.append(k)
        stack.extend(reversed(children[k]))
    return out


def _cumulative(parent: IntArr, values: IntArr) -> IntArr:
    """Sum of ``values`` over each device's chain, from it to the top."""
    out = np.zeros(len(values), dtype=np.int64)
    for k in _topo_order(parent):
        out[k] = values[k] + (out[parent[k]] if parent[k] >= 0 else 0)
    return out


def compute_matrix(
    topo: Topology,
    profile: str = DEFAULT_PROFILE,
    *,
    include_bridges: bool = False,
    select: Sequence[str] | None = None,
    block: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> Matrix:
    """Verdicts for every ordered pair of the selected functions (endpoints by default)."""
    if profile not in KERNEL_PROFILES:
        raise ValueError(f"unknown kernel profile {profile!r}")
    devs = topo.devices
    m = len(devs)
    if select is not None:
        sel = np.array([topo.index[b] for b in select], dtype=np.int64)
    else:
        sel = np.array(
            [k for k, d in enumerate(devs) if include_bridges or not d.is_bridge], dtype=np.int64
        )
    n = len(sel)
    mt = np.zeros((n, n), dtype=np.int8)
    dist = np.zeros((n, n), dtype=np.int32)
    certain = np.ones((n, n), dtype=bool)
    if n == 0 or m == 0:
        return Matrix(topo, profile, tuple(devs[k].bdf for k in sel), mt, dist, certain)

    parent, depth, anc = _chains(topo)
    acs_present = np.array([d.acs is not None for d in devs])
    ctrl = np.array([d.acs.ctrl if d.acs else 0 for d in devs], dtype=np.int64)
    # pci_bridge_has_acs_redir(): RR, CR or EC (every kept profile)
    bad = acs_present & ((ctrl & (cfg.PCI_ACS_RR | cfg.PCI_ACS_CR | cfg.PCI_ACS_EC)) != 0)
    unknown = np.array([not d.acs_known for d in devs])
    cum_bad = _cumulative(parent, bad.astype(np.int64))
    cum_unk = _cumulative(parent, unknown.astype(np.int64))
    allowed_rows, hb_unk_list, cpu_ok = host_bridge_permissions(topo, profile)
    nhb = len(topo.host_bridges)
    allowed = np.array(allowed_rows, dtype=bool).reshape(nhb, nhb)
    hb_unk = np.array(hb_unk_list, dtype=bool)
    guess = (hb_unk[:, None] | hb_unk[None, :]) & (not cpu_ok)
    hb_of = np.array([topo.hb_index[d.host_bridge] for d in devs], dtype=np.int64)

    anc_s = anc[sel]
    depth_s = depth[sel]
    hb_s = hb_of[sel]
    cols = sel
    for r0 in range(0, n, block):
        rows = sel[r0 : r0 + block]
        b = len(rows)
        eq = anc[rows][:, None, :] == anc_s[None, :, :]
        di = depth[rows][:, None]
        dj = depth_s[None, :]
        # (b, n) common prefix length, capped where one chain ends (a device with itself)
        lcp = np.minimum(np.cumprod(eq, axis=2).sum(axis=2), np.minimum(di, dj))
        common = lcp > 0
        safe_l = np.maximum(lcp - 1, 0)
        rows_b = np.broadcast_to(rows[:, None], (b, n))
        cols_b = np.broadcast_to(cols[None, :], (b, n))
        a_idx = np.take_along_axis(anc[rows], safe_l, axis=1)  # common bridge (valid where common)
        dist_a = di - lcp
        dist_b = dj - lcp
        dist_block = np.where(common, dist_a + dist_b, di + dj)

        nb = (cum_bad[rows_b] - cum_bad[a_idx] + bad[a_idx]) + (cum_bad[cols_b] - cum_bad[a_idx])
        nu = (cum_unk[rows_b] - cum_unk[a_idx] + unknown[a_idx]) + (cum_unk[cols_b] - cum_unk[a_idx])
        direct = common & (nb == 0)
        hb_ok = allowed[hb_of[rows][:, None], hb_s[None, :]]
        block_mt = np.where(
            direct,
            MapType.BUS_ADDR.value,
            np.where(hb_ok, MapType.THRU_HOST_BRIDGE.value, MapType.NOT_SUPPORTED.value),
        )
        mt[r0 : r0 + b] = block_mt
        dist[r0 : r0 + b] = dist_block
        hb_guess = guess[hb_of[rows][:, None], hb_s[None, :]] & ~direct
        certain[r0 : r0 + b] = ~(common & (nu > 0)) & ~hb_guess
        if progress is not None:
            progress(min(r0 + b, n), n)
    return Matrix(topo, profile, tuple(devs[k].bdf for k in sel), mt, dist, certain)
