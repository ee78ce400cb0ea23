"""The run-time machine: one object holding every piece of state, so it can be copied and compared.

Driver binding follows the driver core: resources a driver acquires with ``devm_*`` are released
in reverse order when it unbinds (``devres_release_all()``); a release step that must wait (pages
still in use) suspends the unbind until it can go on, as ``memunmap_pages()`` waits in the kernel.
"""

from __future__ import annotations

import copy
import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pdma.errors import KernelError, LifetimeViolation
from p2pdma.p2p.decide import DEFAULT_PROFILE, KERNEL_PROFILES
from p2pdma.pci.topology import Device, Topology

DMA_BIT_MASK_32 = (1 << 32) - 1
PAGE_SIZE = 4096
PAGE_SHIFT = 12

# devm action name -> handler(system, bdf, *args) -> True when done, False to suspend the unbind.
DevmHandler = Callable[..., bool]
_DEVM_HANDLERS: dict[str, DevmHandler] = {}


def devm_handler(name: str) -> Callable[[DevmHandler], DevmHandler]:
    """Register the release step for devm actions called ``name`` (code, not state)."""

    def deco(fn: DevmHandler) -> DevmHandler:
        _DEVM_HANDLERS[name] = fn
        return fn

    return deco


_ATOMIC = (int, str, bool, float, type(None), bytes)


def _fast_deepcopy(self: Any, memo: dict[int, Any]) -> Any:
    """Field-by-field deep copy for slotted dataclasses: skips copy.deepcopy's generic
    reduce/reconstruct path, and immutable field values are shared rather than visited."""
    cls = type(self)
    new = object.__new__(cls)
    memo[id(self)] = new
    for name in cls.__dataclass_fields__:
        v = getattr(self, name)
        object.__setattr__(new, name, v if type(v) in _ATOMIC else copy.deepcopy(v, memo))
    return new


def fast_copy(*classes: type) -> None:
    """Give run-time state classes the fast deep copy (System.copy() runs once per checker state)."""
    for c in classes:
        c.__deepcopy__ = _fast_deepcopy  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken lifetime or API rule: what, where, and the operations that led to it."""

    kind: str
    message: str
    history: tuple[str, ...] = ()


@dataclass(slots=True)
class Binding:
    """A driver bound to a device, and its devm actions in registration order."""

    driver: str
    actions: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    unbinding: bool = False


fast_copy(Binding)


class System:
    """One machine at run time: topology (shared, frozen) plus all mutable state."""

    def __init__(
        self,
        topo: Topology,
        *,
        profile: str = DEFAULT_PROFILE,
        seed: int = 0,
        iommu: str = "dma",
        history_limit: int = 64,
    ) -> None:
        if profile not in KERNEL_PROFILES:
            raise KernelError(f"unknown kernel profile {profile!r}", errno.EINVAL)
        if iommu not in ("dma", "identity", "off"):
            raise KernelError(f"unknown IOMMU mode {iommu!r} (dma, identity, off)", errno.EINVAL)
        self.topo = topo
        self.profile = profile
        self.rng = random.Random(seed)
        self.iommu_mode = iommu
        self.bindings: dict[str, Binding] = {}
        self.non_mappable_bars: set[str] = set()
        self.dma_masks: dict[str, int] = {}
        # Layer state, keyed by device; each layer owns its own entries.
        self.p2pdma: dict[str, Any] = {}  # provider layer: struct pci_p2pdma
        self.iommu: Any = None  # dma layer: IOMMU domains, created on first use
        self.dma_debug: Any = None  # dma layer: live mappings, as CONFIG_DMA_API_DEBUG tracks
        self.ext: dict[str, Any] = {}  # upper layers (dma-buf, vfio, fabric)
        self.next_handle = 1
        self.violations: list[Violation] = []
        self.history: list[str] = []
        self.history_limit = history_limit

    # -- identity, copying, comparing -------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything but the shared topology: what two equal systems agree on."""
        return {k: v for k, v in self.__dict__.items() if k not in ("topo", "rng", "history_limit")}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, System):
            return NotImplemented
        return self.topo is other.topo and self.state() == other.state() and (
            self.rng.getstate() == other.rng.getstate()
        )

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> System:
        """A deep copy sharing the (immutable) topology; the RNG state is an immutable tuple, so it
        is handed over rather than copied element by element."""
        new = System.__new__(System)
        memo: dict[int, Any] = {id(self.topo): self.topo}
        for k, v in self.__dict__.items():
            if k == "topo":
                new.topo = v
            elif k == "rng":
                new.rng = random.Random()
                new.rng.setstate(v.getstate())
            else:
                setattr(new, k, copy.deepcopy(v, memo))
        return new

    # -- bookkeeping --------------------------------------------------------------------------
    def log(self, text: str) -> None:
        """Remember an operation, so a violation can say what led to it."""
        self.history.append(text)
        if len(self.history) > self.history_limit:
            del self.history[: len(self.history) - self.history_limit]

    def handle(self) -> int:
        """A fresh identifier for a run-time object (deterministic, so copies replay alike)."""
        h = self.next_handle
        self.next_handle += 1
        return h

    def violate(self, kind: str, message: str, *, raise_it: bool = True) -> Violation:
        """Record a violation; raise it as LifetimeViolation unless told not to."""
        v = Violation(kind, message, tuple(self.history))
        self.violations.append(v)
        if raise_it:
            raise LifetimeViolation(f"{kind}: {message}")
        return v

    def device(self, bdf: str) -> Device:
        """The topology's device, or ENODEV for an unknown BDF."""
        if bdf not in self.topo:
            raise KernelError(f"no PCI device {bdf}", errno.ENODEV)
        return self.topo[bdf]

    def dma_mask(self, bdf: str) -> int:
        """The device's streaming DMA mask (32 bits until a driver sets more, as the PCI core does)."""
        return self.dma_masks.get(bdf, DMA_BIT_MASK_32)

    def set_dma_mask(self, bdf: str, bits: int) -> None:
        """Mirrors dma_set_mask(): 1..64 bits; anything else is -EIO."""
        self.device(bdf)
        if not 12 <= bits <= 64:
            raise KernelError(f"dma mask of {bits} bits not supported", errno.EIO)
        self.dma_masks[bdf] = (1 << bits) - 1

    # -- driver binding -------------------------------------------------------------------------
    def bind(self, bdf: str, driver: str) -> None:
        """Bind ``driver`` to a device (EBUSY if one is bound or unbinding)."""
        self.device(bdf)
        if bdf in self.bindings:
            raise KernelError(f"{bdf} already has driver {self.bindings[bdf].driver}", errno.EBUSY)
        self.bindings[bdf] = Binding(driver)
        self.log(f"bind {bdf} {driver}")

    def driver(self, bdf: str) -> str | None:
        b = self.bindings.get(bdf)
        return None if b is None or b.unbinding else b.driver

    def devm_add_action(self, bdf: str, name: str, *args: Any) -> None:
        """Mirrors devm_add_action_or_reset(): needs a bound driver (ENODEV otherwise)."""
        b = self.bindings.get(bdf)
        if b is None or b.unbinding:
            raise KernelError(f"{bdf} has no bound driver for devm resources", errno.ENODEV)
        if name not in _DEVM_HANDLERS:
            raise KernelError(f"no release step named {name}", errno.EINVAL)
        b.actions.append((name, args))

    def unbind(self, bdf: str) -> bool:
        """Unbind the driver: run devm releases newest first. False when a step waits (the unbind
        completes later, when what it waits for comes back)."""
        b = self.bindings.get(bdf)
        if b is None:
            raise KernelError(f"{bdf} has no driver", errno.ENODEV)
        if not b.unbinding:
            self.log(f"unbind {bdf} {b.driver}")
        b.unbinding = True
        return self._run_releases(bdf)

    def resume_unbind(self, bdf: str) -> bool:
        """Called when a waiting release step may now finish; True when the unbind completed."""
        b = self.bindings.get(bdf)
        if b is None or not b.unbinding:
            return False
        return self._run_releases(bdf)

    def _run_releases(self, bdf: str) -> bool:
        b = self.bindings[bdf]
        while b.actions:
            name, args = b.actions[-1]
            if not _DEVM_HANDLERS[name](self, bdf, *args):
                return False
            b.actions.pop()
        del self.bindings[bdf]
        self.log(f"unbound {bdf}")
        return True

    def unplug(self, bdf: str) -> None:
        """Surprise removal: the driver is unbound (its releases run) and the device is gone."""
        self.device(bdf)
        self.log(f"unplug {bdf}")
        if bdf in self.bindings:
            self.unbind(bdf)
        self.ext.setdefault("unplugged", set()).add(bdf)

    def present(self, bdf: str) -> bool:
        return bdf in self.topo and bdf not in self.ext.get("unplugged", set())

    def check_live(self, what: str, alive: bool) -> None:
        """Raise (and record) a lifetime violation when ``what`` is used after its end."""
        if not alive:
            self.violate("use-after-release", what)
