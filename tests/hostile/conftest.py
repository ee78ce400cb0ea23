"""Hostile inputs: a guard that turns a hang into a failure (SIGALRM), and a seeded RNG."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

GUARD_S = 10


class Hung(Exception):
    pass


@pytest.fixture()
def guard() -> Iterator[None]:
    """Fail (not hang) when the test blocks for GUARD_S seconds, e.g. opening a FIFO."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"blocked for {GUARD_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(GUARD_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture()
def rng() -> random.Random:
    return random.Random(16)
