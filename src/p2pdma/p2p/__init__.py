"""The kernel's P2P decision: ACS per port, host bridge whitelist, map type and distance."""

from p2pdma.p2p.decide import KERNEL_PROFILES, MapType, Verdict, calc_map_type_and_dist

__all__ = ["KERNEL_PROFILES", "MapType", "Verdict", "calc_map_type_and_dist"]
