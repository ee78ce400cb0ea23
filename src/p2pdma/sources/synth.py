"""Synthetic machines: random but plausible PCIe trees as spec dicts, reproducible from a seed.

Each host bridge is its own PCI domain (``pciDDDD:00``); more are added when 256 buses run out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from p2pdma.pci import config as cfg
from p2pdma.pci.topology import format_bdf
from p2pdma.sources.spec import SpecMachine, parse_spec

Spec = dict[str, Any]

MAX_BUS = 255
MAX_SLOT = 31
PER_HOST_BRIDGE = 160  # endpoints planned per host bridge before another one is added
P_SWITCH = 0.6  # a port below which a switch (not an endpoint) sits, while depth allows
P_EMPTY = 0.05  # an empty root or downstream port
P_RCIEP = 0.05  # a root bus slot holding an integrated endpoint rather than a root port
P_SAME_SLOT = 0.3  # a root port sharing its slot with the previous one (next function)
ACS_CAP = 0x7F  # SV TB RR CR UF EC DT; bits 8..15 (vector size) are drawn separately
ACS_CTRL_BASES = (0x00, 0x01, 0x04, 0x08, 0x0C, 0x11, 0x15, 0x19, 0x1D, 0x1F, 0x5F)
ECVS_CHOICES = (0, 0, 0, 8, 16, 32)  # 0 encodes a 256-bit Egress Control Vector

CPUS: dict[str, Spec] = {
    "intel": {
        "vendor": "GenuineIntel",
        "family": 6,
        "model": 143,
        "model_name": "Intel(R) Xeon(R) Platinum 8480+",
    },
    "amd": {
        "vendor": "AuthenticAMD",
        "family": 0x19,
        "model": 1,
        "model_name": "AMD EPYC 7763 64-Core Processor",
    },
}
# Host bridge devices: whitelisted (8086:3c00 only within one host bridge) and not whitelisted.
WHITELISTED_HB = ("8086:2020", "8086:2020", "8086:09a2", "8086:3c00")
OTHER_HB = {"intel": "8086:1234", "amd": "1022:1480"}
ROOT_PORT_ID = {"intel": "8086:347a", "amd": "1022:1483"}
RCIEP_ID = {"intel": "8086:0b26", "amd": "1022:14cb"}
SWITCH_IDS = ("1000:c030", "10b5:8796", "11f8:4052")


@dataclass(frozen=True, slots=True)
class EndpointKind:
    """A device model the generator places: ids, class, link and BARs of the PF and its VFs."""

    pf_id: str
    vf_id: str
    class_code: int
    link: tuple[float, int]
    bar: int
    vf_bar: int
    driver: str


ENDPOINTS = (
    EndpointKind("10de:2330", "10de:2330", 0x030200, (32.0, 16), 0x1000_0000, 0x100_0000, "nvidia"),
    EndpointKind("15b3:1021", "15b3:101e", 0x020700, (32.0, 16), 0x200_0000, 0x10_0000, "mlx5_core"),
    EndpointKind("144d:a824", "144d:a824", 0x010802, (16.0, 4), 0x4000, 0x4000, "nvme"),
    EndpointKind("8086:1592", "8086:1889", 0x020000, (16.0, 16), 0x200_0000, 0x2_0000, "ice"),
)


class _Domain:
    """Bus and root-bus slot bookkeeping for one host bridge (one PCI domain, root bus 00)."""

    def __init__(self, domain: int) -> None:
        self.domain = domain
        self.next_bus = 1
        self.slot = 0  # slot of the last root bus item (00.0 is the host bridge device)
        self.fn = 0

    def take_bus(self) -> int | None:
        """The next free bus number (depth-first order keeps children above parents), or None."""
        if self.next_bus > MAX_BUS:
            return None
        self.next_bus += 1
        return self.next_bus - 1

    @property
    def buses_left(self) -> bool:
        return self.next_bus <= MAX_BUS

    def bdf(self, bus: int, slot: int, fn: int) -> str:
        return format_bdf(self.domain, bus, slot, fn)


class _Generator:
    """One generate() call: the parameters and the random stream."""

    def __init__(
        self,
        rng: random.Random,
        *,
        max_switch_depth: int,
        acs_probability: float,
        ec_probability: float,
        config_size_64_probability: float,
        multifunction_probability: float,
        vf_probability: float,
        cpu: str,
        whitelisted: bool,
    ) -> None:
        self.rng = rng
        self.max_switch_depth = max_switch_depth
        self.p_acs = acs_probability
        self.p_ec = ec_probability
        self.p_cfg64 = config_size_64_probability
        self.p_mf = multifunction_probability
        self.p_vf = vf_probability
        self.cpu = cpu
        self.whitelisted = whitelisted

    def _config(self, dev: Spec) -> Spec:
        if self.rng.random() < self.p_cfg64:
            dev["config_size"] = 64
        return dev

    def _acs(self, probability: float) -> Spec | None:
        """An ACS capability with random controls (Egress Control with its vector), or None."""
        rng = self.rng
        if rng.random() >= probability:
            return None
        ecvs = rng.choice(ECVS_CHOICES)
        cap = ACS_CAP | (ecvs << cfg.PCI_ACS_ECVS_SHIFT)
        ctrl = rng.choice(ACS_CTRL_BASES)
        if rng.random() < self.p_ec:
            ctrl |= cfg.PCI_ACS_EC
        acs: Spec = {"cap": cap, "ctrl": ctrl}
        if ctrl & cfg.PCI_ACS_EC:
            bits = cfg.egress_vector_bits(cap)
            words = []
            for i in range((bits + 31) // 32):
                mask = (1 << min(32, bits - 32 * i)) - 1
                mode = rng.random()
                word = 0 if mode < 0.25 else mask if mode < 0.4 else rng.getrandbits(32) & mask
                words.append(word)
            acs["egress"] = words
        return acs

    def _port(self, dom: _Domain, bus: int, slot: int, fn: int, kind: str, ident: str,
              port_number: int, acs_probability: float) -> Spec:
        dev: Spec = {
            "bdf": dom.bdf(bus, slot, fn),
            "id": ident,
            "class": 0x060400,
            "port": kind,
            "port_number": port_number,
            "link": [16.0, 16],
        }
        acs = self._acs(acs_probability)
        if acs is not None:
            dev["acs"] = acs
        return self._config(dev)

    def _unit(self, dom: _Domain, bus: int, room: int) -> tuple[list[Spec], int]:
        """An endpoint at slot 0 of ``bus``: one or more functions, maybe VFs; at most ``room``."""
        rng = self.rng
        kind = rng.choice(ENDPOINTS)
        nfuncs = rng.randint(2, 4) if rng.random() < self.p_mf else 1
        nvfs = rng.randint(1, 8) if rng.random() < self.p_vf else 0
        nfuncs = min(nfuncs, room)
        nvfs = min(nvfs, room - nfuncs)
        devs: list[Spec] = []
        for fn in range(nfuncs):
            dev: Spec = {
                "bdf": dom.bdf(bus, 0, fn),
                "id": kind.pf_id,
                "class": kind.class_code,
                "port": "endpoint",
                "link": list(kind.link),
                "bars": [{"size": kind.bar, "prefetch": True, "bits": 64}],
                "driver": kind.driver,
            }
            if nfuncs > 1:
                dev["multifunction"] = True
                acs = self._acs(self.p_acs)
                if acs is not None:
                    dev["acs"] = acs
            devs.append(self._config(dev))
        if nvfs:
            devs[0]["vfs"] = {
                "count": nvfs,
                "id": kind.vf_id,
                "first_bdf": dom.bdf(bus, nfuncs >> 3, nfuncs & 7),
                "bars": [{"size": kind.vf_bar, "prefetch": True, "bits": 64}],
            }
        return devs, nfuncs + nvfs

    def _below_port(self, dom: _Domain, depth: int, room: int) -> tuple[list[Spec], int]:
        """What hangs below a root or downstream port on a fresh bus: a switch or an endpoint."""
        bus = dom.take_bus()
        if bus is None:
            return [], 0
        if depth < self.max_switch_depth and self.rng.random() < P_SWITCH:
            return self._switch(dom, bus, depth + 1, room)
        return self._unit(dom, bus, room)

    def _switch(self, dom: _Domain, bus: int, depth: int, room: int) -> tuple[list[Spec], int]:
        """A switch: upstream port at ``bus``, downstream ports on its internal bus, subtrees."""
        rng = self.rng
        ident = rng.choice(SWITCH_IDS)
        usp = self._port(dom, bus, 0, 0, "switch-upstream", ident, 0, self.p_acs / 3)
        internal = dom.take_bus()
        if internal is None:
            return [usp], 0
        k = rng.randint(2, 6)
        numbers = rng.sample(range(24), k)
        used = 0
        dsps: list[Spec] = []
        for i in range(k):
            dsp = self._port(dom, internal, i, 0, "switch-downstream", ident, numbers[i], self.p_acs)
            if used < room and rng.random() >= P_EMPTY:
                kids, n = self._below_port(dom, depth, room - used)
                if kids:
                    dsp["children"] = kids
                used += n
            dsps.append(dsp)
        usp["children"] = dsps
        return [usp], used

    def host_bridge(self, index: int, quota: int) -> tuple[Spec, int]:
        """Host bridge ``index`` (domain ``index``) holding at most ``quota`` endpoints (>= 1)."""
        rng = self.rng
        dom = _Domain(index)
        if self.whitelisted:
            hb_id = rng.choice(WHITELISTED_HB)
        else:
            hb_id = OTHER_HB[self.cpu]
        devices: list[Spec] = [
            self._config({"bdf": dom.bdf(0, 0, 0), "id": hb_id, "class": 0x060000})
        ]
        used = 1
        port_numbers: set[int] = set()
        slot_head: Spec | None = None
        while used < quota and dom.buses_left:
            rciep = rng.random() < P_RCIEP
            if not rciep and slot_head is not None and dom.fn < 7 and rng.random() < P_SAME_SLOT:
                dom.fn += 1
                slot_head["multifunction"] = True
            elif dom.slot < MAX_SLOT:
                dom.slot, dom.fn = dom.slot + 1, 0
            else:
                break
            if rciep:
                slot_head = None
                dev: Spec = {
                    "bdf": dom.bdf(0, dom.slot, 0),
                    "id": RCIEP_ID[self.cpu],
                    "class": 0x088000,
                    "port": "rc-endpoint",
                    "bars": [{"size": 0x40000, "bits": 64}],
                }
                devices.append(self._config(dev))
                used += 1
                continue
            number = rng.randrange(48)
            if number in port_numbers:
                number = min(set(range(256)) - port_numbers)
            port_numbers.add(number)
            rp = self._port(dom, 0, dom.slot, dom.fn, "root-port", ROOT_PORT_ID[self.cpu], number,
                            self.p_acs)
            if dom.fn == 0:
                slot_head = rp
            if rng.random() >= P_EMPTY:
                kids, n = self._below_port(dom, 0, quota - used)
                if kids:
                    rp["children"] = kids
                used += n
            devices.append(rp)
        name = f"pci{index:04x}:00"
        return {"name": name, "numa_node": 0, "devices": devices}, used


def generate(
    n_endpoints: int,
    *,
    seed: int = 0,
    host_bridges: int = 2,
    max_switch_depth: int = 2,
    acs_probability: float = 0.3,
    ec_probability: float = 0.1,
    config_size_64_probability: float = 0.0,
    multifunction_probability: float = 0.1,
    vf_probability: float = 0.05,
    cpu: str = "intel",
    whitelisted: bool = True,
    hmat: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """A spec dict (for parse_spec()) whose machine has exactly ``n_endpoints`` non-bridge functions
    (00.0 host bridge devices, RCiEPs, every function and VF count), so at most that many host bridges.
    """
    if n_endpoints < 1:
        raise ValueError(f"n_endpoints must be at least 1, got {n_endpoints}")
    if host_bridges < 1:
        raise ValueError(f"host_bridges must be at least 1, got {host_bridges}")
    if max_switch_depth < 0:
        raise ValueError(f"max_switch_depth must not be negative, got {max_switch_depth}")
    probabilities = {
        "acs_probability": acs_probability,
        "ec_probability": ec_probability,
        "config_size_64_probability": config_size_64_probability,
        "multifunction_probability": multifunction_probability,
        "vf_probability": vf_probability,
    }
    for key, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{key} must lie in [0, 1], got {p}")
    if cpu not in CPUS:
        raise ValueError(f"cpu must be one of {', '.join(CPUS)}, got {cpu!r}")

    rng = random.Random(seed)
    gen = _Generator(
        rng,
        max_switch_depth=max_switch_depth,
        acs_probability=acs_probability,
        ec_probability=ec_probability,
        config_size_64_probability=config_size_64_probability,
        multifunction_probability=multifunction_probability,
        vf_probability=vf_probability,
        cpu=cpu,
        whitelisted=whitelisted,
    )
    planned = min(n_endpoints, max(host_bridges, -(-n_endpoints // PER_HOST_BRIDGE)))
    quotas = [n_endpoints // planned + (1 if i < n_endpoints % planned else 0) for i in range(planned)]
    hbs: list[Spec] = []
    carry = 0
    index = 0
    while index < planned or carry:
        quota = (quotas[index] if index < planned else 0) + carry
        hb, used = gen.host_bridge(index, quota)
        hb["numa_node"] = min(1, index * 2 // planned)
        hbs.append(hb)
        carry = quota - used
        index += 1

    spec: Spec = {
        "name": name or f"synth-{n_endpoints}-s{seed}",
        "description": (
            f"synthetic: {n_endpoints} endpoints, seed {seed}, {len(hbs)} host bridges, "
            f"switch depth <= {max_switch_depth}"
        ),
        "cpu": dict(CPUS[cpu]),
        "host_bridges": hbs,
    }
    if hmat:
        names = [hb["name"] for hb in hbs]
        pairs = [(a, b) for a in names for b in names]
        chosen = rng.sample(pairs, rng.randint(1, min(4, len(pairs))))
        spec["hmat"] = [
            {
                "initiator": a,
                "target": b,
                "read_bandwidth": rng.choice((16000, 32000, 64000)),
                "write_bandwidth": rng.choice((16000, 32000, 64000)),
                "read_latency": rng.choice((250_000, 400_000, 600_000)),
                "write_latency": rng.choice((250_000, 400_000, 600_000)),
            }
            for a, b in chosen
        ]
    return spec


def generate_machine(
    n_endpoints: int,
    *,
    seed: int = 0,
    host_bridges: int = 2,
    max_switch_depth: int = 2,
    acs_probability: float = 0.3,
    ec_probability: float = 0.1,
    config_size_64_probability: float = 0.0,
    multifunction_probability: float = 0.1,
    vf_probability: float = 0.05,
    cpu: str = "intel",
    whitelisted: bool = True,
    hmat: bool = False,
    name: str | None = None,
) -> SpecMachine:
    """generate(), parsed: a SpecMachine ready for ``.topology()``."""
    spec = generate(
        n_endpoints,
        seed=seed,
        host_bridges=host_bridges,
        max_switch_depth=max_switch_depth,
        acs_probability=acs_probability,
        ec_probability=ec_probability,
        config_size_64_probability=config_size_64_probability,
        multifunction_probability=multifunction_probability,
        vf_probability=vf_probability,
        cpu=cpu,
        whitelisted=whitelisted,
        hmat=hmat,
        name=name,
    )
    return parse_spec(spec, where=f"synth {spec['name']}")
