"""One stream clock: decoder timestamps to seconds from stream start, with gap detection."""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

from livesense.records import Gap


class StreamClock:
    """Maps per-stream timestamps to seconds from stream start and spots timestamp jumps.

    Stream start (the origin) is the smallest first timestamp over the streams in `kinds`,
    so audio and video share one time axis; pass `origin` when the container states it,
    else it is learnt from the first timestamps offered. A forward jump of more than `gap`
    seconds in the `lead` stream gives a Gap and later times stay true; a backward jump
    makes that stream continue from where it was (a restarted or wrapped clock).
    """

    def __init__(
        self,
        kinds: Iterable[str],
        *,
        lead: str | None = None,
        gap: float = 1.0,
        settle: float = 1.0,
        settle_count: int = 256,
        origin: float | None = None,
    ) -> None:
        self.kinds = tuple(kinds)
        if not self.kinds:
            raise ValueError("StreamClock needs at least one stream kind")
        self.lead = lead if lead is not None else self.kinds[0]
        self.gap = gap
        self.settle = settle
        self.settle_count = settle_count
        self.origin: float | None = origin
        self._first: dict[str, float] = {}
        self._latest = -math.inf
        self._offered = 0
        self._offset = dict.fromkeys(self.kinds, 0.0)
        self._next: dict[str, float | None] = dict.fromkeys(self.kinds, None)

    @staticmethod
    def seconds(pts: int | None, time_base: Fraction | None) -> float | None:
        """A timestamp in seconds, or None when the decoder gave none."""
        if pts is None or time_base is None:
            return None
        return float(pts * time_base)

    def offer(self, kind: str, when: float | None) -> bool:
        """Note a timestamp seen before the origin is fixed; True once the origin is fixed.

        The origin is fixed when every stream has shown a timestamp, or when `settle` seconds
        or `settle_count` timestamps went by without one from some stream.
        """
        if self.origin is not None:
            return True
        self._offered += 1
        if when is not None:
            self._first[kind] = min(self._first.get(kind, when), when)
            self._latest = max(self._latest, when)
        everyone = all(k in self._first for k in self.kinds)
        waited = bool(self._first) and (
            self._latest - min(self._first.values()) >= self.settle
            or self._offered >= self.settle_count
        )
        if everyone or waited:
            self.fix()
        return self.origin is not None

    def fix(self) -> float:
        """Fix the origin with the timestamps seen so far (0.0 when none was seen)."""
        if self.origin is None:
            self.origin = min(self._first.values()) if self._first else 0.0
        return self.origin

    def expected(self, kind: str) -> float | None:
        """Stream time at which the next media of `kind` should start."""
        return self._next[kind]

    def stamp(
        self, kind: str, when: float | None, duration: float = 0.0
    ) -> tuple[float, Gap | None]:
        """Stream time of media of `kind` at absolute time `when` lasting `duration` seconds.

        Returns the time and, when the lead stream jumped forward, the Gap it left.
        A missing timestamp continues from the previous media of that stream.
        """
        origin = self.fix()
        expected = self._next[kind]
        if when is None:
            t = expected if expected is not None else 0.0
        else:
            t = when - origin + self._offset[kind]
        found: Gap | None = None
        if expected is not None:
            if t > expected + self.gap:
                if kind == self.lead:
                    found = Gap(expected, t, f"the timestamps jumped ahead {t - expected:.1f} s")
            elif t < expected - self.gap:
                self._offset[kind] += expected - t
                t = expected
        self._next[kind] = t + max(0.0, duration)
        return t, found
