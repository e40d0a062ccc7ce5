"""Half-open intervals [start, end) on any ordered type: merge, subtract, intersect, overlap.

Inputs to `subtract`, `intersect` and `first_overlap` must be merged (sorted, disjoint,
non-touching) lists, which is what `merge` returns. Empty intervals are dropped everywhere.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...
    def __le__(self, other: Any, /) -> bool: ...


P = TypeVar("P", bound=_Ordered)
Interval = tuple[P, P]


def overlaps(a: tuple[P, P], b: tuple[P, P]) -> bool:
    """True when the half-open intervals share at least one point (touching is not)."""
    return a[0] < b[1] and b[0] < a[1]


def merge(intervals: Iterable[tuple[P, P]]) -> list[tuple[P, P]]:
    """Sort and coalesce overlapping or touching intervals; drop empty ones."""
    ordered = sorted((s, e) for s, e in intervals if s < e)
    merged: list[tuple[P, P]] = []
    for start, end in ordered:
        if merged and start <= merged[-1][1]:
            if merged[-1][1] < end:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def subtract(base: Sequence[tuple[P, P]], cut: Sequence[tuple[P, P]]) -> list[tuple[P, P]]:
    """Parts of `base` not covered by `cut` (both merged)."""
    result: list[tuple[P, P]] = []
    j = 0
    for start, end in base:
        cursor = start
        while j < len(cut) and cut[j][1] <= cursor:
            j += 1
        k = j
        while k < len(cut) and cut[k][0] < end:
            if cursor < cut[k][0]:
                result.append((cursor, cut[k][0]))
            if cursor < cut[k][1]:
                cursor = cut[k][1]
            k += 1
        if cursor < end:
            result.append((cursor, end))
    return result


def intersect(a: Sequence[tuple[P, P]], b: Sequence[tuple[P, P]]) -> list[tuple[P, P]]:
    """Points in both `a` and `b` (both merged)."""
    result: list[tuple[P, P]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = a[i][0] if b[j][0] < a[i][0] else b[j][0]
        end = a[i][1] if a[i][1] < b[j][1] else b[j][1]
        if start < end:
            result.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return result


def first_overlap(merged: Sequence[tuple[P, P]], interval: tuple[P, P]) -> tuple[P, P] | None:
    """The first interval of `merged` overlapping `interval`, by binary search."""
    index = bisect_right(merged, interval[0], key=lambda iv: iv[1])
    if index < len(merged) and merged[index][0] < interval[1]:
        return merged[index]
    return None


def widen(
    intervals: Iterable[tuple[datetime, datetime]], before: timedelta, after: timedelta
) -> list[tuple[datetime, datetime]]:
    """Each interval grown by `before` at its start and `after` at its end, merged."""
    return merge((start - before, end + after) for start, end in intervals)
