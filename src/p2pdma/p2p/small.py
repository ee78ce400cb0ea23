"""All-pairs verdicts in plain Python, for the tables a terminal shows (64 devices or fewer): the same
answers as p2p.matrix.compute_matrix() without importing numpy, which costs more than the whole
table on a small machine (issue 17's start-up goal).

Same reduction of calc_map_type_and_dist() (drivers/pci/p2pdma.c, in every tree a profile names: 5.4 to
7.3 and pci-next, listed with their commits in p2p/kernels.py) as p2p.matrix: the common prefix
of the two top-down chains, the ports where pci_bridge_has_acs_redir() holds (or ACS is unknown) on
the provider's chain up to and including the common bridge and on the client's chain below it, and
host_bridge_whitelist() per pair of host bridges for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from p2pdma.p2p import platform
from p2pdma.p2p.acs import has_acs_redir
from p2pdma.p2p.decide import DEFAULT_PROFILE, KERNEL_PROFILES, MapType, Verdict, calc_map_type_and_dist
from p2pdma.p2p.kernels import get_profile
from p2pdma.pci.topology import Device, Topology

MAP_TYPES = (MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE, MapType.NOT_SUPPORTED)


class PairTable(Protocol):
    """What the text renderings read of a matrix: either p2p.matrix.Matrix or SmallMatrix."""

    @property
    def topo(self) -> Topology: ...

    @property
    def profile(self) -> str: ...

    @property
    def bdfs(self) -> tuple[str, ...]: ...

    def cell(self, i: int, j: int) -> tuple[int, int, bool]: ...

    def verdict(self, i: int, j: int) -> Verdict: ...

    def pair_counts(self) -> dict[str, int]: ...

    def uncertain_why(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class SmallMatrix:
    """Map type, distance and certainty per ordered (provider row, client column) pair, as lists."""

    topo: Topology
    profile: str
    bdfs: tuple[str, ...]
    map_type: tuple[tuple[int, ...], ...]
    distance: tuple[tuple[int, ...], ...]
    certain: tuple[tuple[bool, ...], ...]

    def cell(self, i: int, j: int) -> tuple[int, int, bool]:
        """(map type value, distance, certain) of row ``i``, column ``j``."""
        return self.map_type[i][j], self.distance[i][j], self.certain[i][j]

    def verdict(self, i: int, j: int) -> Verdict:
        """The full per-pair verdict (reasons, ports, fix) for row ``i``, column ``j``."""
        return calc_map_type_and_dist(self.topo, self.bdfs[i], self.bdfs[j], self.profile)

    def pair_counts(self) -> dict[str, int]:
        """Matrix.pair_counts(): distinct ordered pairs per map type, their total, the uncertain ones and
        the self pairs apart."""
        n = len(self.bdfs)
        out = {t.name: 0 for t in MAP_TYPES}
        unc = 0
        for i in range(n):
            for j in range(n):
                if i != j:
                    out[MapType(self.map_type[i][j]).name] += 1
                    unc += not self.certain[i][j]
        out["pairs"] = n * (n - 1)
        out["uncertain"] = unc
        out["self"] = n
        return out

    def uncertain_why(self) -> dict[str, int]:
        """Matrix.uncertain_why(): uncertain distinct pairs by the fact the input lacked."""
        depth = [len(self.topo.chain(b)) for b in self.bdfs]
        acs = hb = 0
        for i, di in enumerate(depth):
            for j, dj in enumerate(depth):
                if i != j and not self.certain[i][j]:
                    if self.distance[i][j] < di + dj:
                        acs += 1
                    else:
                        hb += 1
        return {"acs": acs, "host_bridge": hb}


def host_bridge_permissions(topo: Topology, profile: str) -> tuple[list[list[bool]], list[bool], bool]:
    """Per (provider, client) host bridge of ``topo``: whether P2P between functions below them goes
    through the host bridge (cpu_supports_p2pdma() or host_bridge_whitelist(), read with a function of
    each as the kernel does: drivers/pci/p2pdma.c of the profile's tree); which host bridges' device is
    missing from the input (their refusals are guesses); and the CPU rule alone. Shared by both matrices."""
    prof = get_profile(profile)
    cpu_ok = platform.cpu_supports_p2pdma(topo, prof.cpu_amd_zen)
    rep: dict[str, Device] = {}
    for dv in topo.devices:
        rep.setdefault(dv.host_bridge, dv)
    hbs = topo.host_bridges
    allowed = [
        [
            ha.name in rep and hb.name in rep and (
                cpu_ok or platform.host_bridge_whitelist(
                    topo, rep[ha.name], rep[hb.name], prof.whitelist, prof.host_bridge_root_port)
            )
            for hb in hbs
        ]
        for ha in hbs
    ]
    return allowed, [not h.host_bridge_dev_known for h in hbs], cpu_ok


def compute_small(
    topo: Topology,
    profile: str = DEFAULT_PROFILE,
    *,
    include_bridges: bool = False,
    select: Sequence[str] | None = None,
) -> SmallMatrix:
    """Verdicts for every ordered pair of the selected functions (endpoints by default), as
    compute_matrix() gives them (a test compares the two on every example and shared tree)."""
    if profile not in KERNEL_PROFILES:
        raise ValueError(f"unknown kernel profile {profile!r}")
    devs = topo.devices
    if select is not None:
        sel = [topo.index[b] for b in select]
    else:
        sel = [k for k, d in enumerate(devs) if include_bridges or not d.is_bridge]
    bdfs = tuple(devs[k].bdf for k in sel)
    if not sel:
        return SmallMatrix(topo, profile, bdfs, (), (), ())
    bad_of = [1 if has_acs_redir(d) else 0 for d in devs]
    unk_of = [0 if d.acs_known else 1 for d in devs]
    allowed, hb_unk, cpu_ok = host_bridge_permissions(topo, profile)
    hb_of = [topo.hb_index[devs[k].host_bridge] for k in sel]
    sel_chains = [[topo.index[x.bdf] for x in reversed(topo.chain(b))] for b in bdfs]  # top-down
    bus, thru, ns = MapType.BUS_ADDR.value, MapType.THRU_HOST_BRIDGE.value, MapType.NOT_SUPPORTED.value
    mts: list[tuple[int, ...]] = []
    dists: list[tuple[int, ...]] = []
    sures: list[tuple[bool, ...]] = []
    for r, ci in enumerate(sel_chains):
        mt_row: list[int] = []
        d_row: list[int] = []
        s_row: list[bool] = []
        hr = hb_of[r]
        for c, cj in enumerate(sel_chains):
            lcp = 0
            for x, y in zip(ci, cj, strict=False):
                if x != y:
                    break
                lcp += 1
            hc = hb_of[c]
            if lcp:
                # provider side: its chain up to and including the common bridge; client side: below it
                nb = sum(bad_of[k] for k in ci[lcp - 1:]) + sum(bad_of[k] for k in cj[lcp:])
                nu = sum(unk_of[k] for k in ci[lcp - 1:]) + sum(unk_of[k] for k in cj[lcp:])
                dist = len(ci) + len(cj) - 2 * lcp
                direct = nb == 0
            else:
                nu = 0
                dist = len(ci) + len(cj)
                direct = False
            mt_row.append(bus if direct else thru if allowed[hr][hc] else ns)
            d_row.append(dist)
            guess = (hb_unk[hr] or hb_unk[hc]) and not cpu_ok and not direct
            s_row.append(not (lcp and nu > 0) and not guess)
        mts.append(tuple(mt_row))
        dists.append(tuple(d_row))
        sures.append(tuple(s_row))
    return SmallMatrix(topo, profile, bdfs, tuple(mts), tuple(dists), tuple(sures))
