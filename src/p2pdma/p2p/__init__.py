"""The kernel's P2P decision: ACS per port, host bridge whitelist, map type and distance.

The names below are loaded on first use, so importing ``p2pdma.p2p.kernels`` (the CLI's parser does)
does not load the decision itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KERNEL_PROFILES", "MapType", "Verdict", "calc_map_type_and_dist"]


def __getattr__(name: str) -> Any:
    """``KERNEL_PROFILES``, ``MapType``, ``Verdict``, ``calc_map_type_and_dist`` from p2p.decide, lazily."""
    if name in __all__:
        from p2pdma.p2p import decide

        return getattr(decide, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
