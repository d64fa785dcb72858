"""Walks over a table in physical or key order, in batches sized by a time budget.

A purge touches every page once: each batch covers the next range of the table (pages, integer keys
or primary-key values), so no batch rescans what an earlier one left behind. The size of the next
range follows the time the last batch took, aiming below the per-transaction budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, func, select, true, tuple_
from sqlalchemy.engine import Connection

# Aim below the budget: the time of a batch varies with how many expired rows its range holds.
_AIM = 0.7
_MAX_GROWTH = 2.0
_MAX_SHRINK = 0.5


@dataclass
class BatchSizer:
    """Multiplicative increase and decrease of the batch size towards a time budget."""

    size: float
    low: float
    high: float
    budget_s: float

    def current(self) -> int:
        """The size of the next batch."""
        return max(int(self.low), int(self.size))

    def observe(self, elapsed_s: float) -> None:
        """Adapt after a batch that took `elapsed_s` seconds."""
        ratio = (self.budget_s * _AIM) / max(elapsed_s, 1e-4)
        factor = min(_MAX_GROWTH, max(_MAX_SHRINK, ratio))
        self.size = min(self.high, max(self.low, self.size * factor))

    def shrink(self) -> None:
        """Cut the size after a batch that hit a lock or statement timeout."""
        self.size = max(self.low, self.size / 4)


class Walker(Protocol):
    """Yields the range of the next batch; `advance` moves past it once the batch committed."""

    sizer: BatchSizer

    def next_scope(self, conn: Connection) -> ColumnElement[bool] | None:
        """The condition selecting the next range, or None when the walk is over."""
        ...

    def advance(self, removed: int) -> None:
        """The batch over the last range committed, removing `removed` rows: move on."""
        ...


class IntRangeWalker:
    """Ranges [a, a + n) of one integer column (a rowid or an integer primary key).

    After a range that removed nothing, the next one starts at the next existing key (one index
    seek), so a gap in the keys costs one probe, not a run of empty batches whose speed would
    inflate the range size.
    """

    def __init__(
        self, source: Any, column: ColumnElement[Any], low: int, high: int, sizer: BatchSizer
    ) -> None:
        self.source = source
        self.column = column
        self.sizer = sizer
        self._next = low
        self._high = high
        self._end = low
        self._probe = False

    def next_scope(self, conn: Connection) -> ColumnElement[bool] | None:
        """The next key range, or None past the largest key seen at the start."""
        if self._probe:
            probe = select(func.min(self.column)).select_from(self.source)
            first = conn.execute(probe.where(self.column >= self._next)).scalar()
            self._next = self._high + 1 if first is None else int(first)
        if self._next > self._high:
            return None
        self._end = self._next + self.sizer.current()
        return and_(self.column >= self._next, self.column < self._end)

    def advance(self, removed: int) -> None:
        """Move past the last range."""
        self._next = self._end
        self._probe = removed == 0


def int_range_walker(
    conn: Connection, source: Any, column: ColumnElement[Any], sizer: BatchSizer
) -> IntRangeWalker | None:
    """A walker over the integer `column` of `source`, or None when the table is empty."""
    bounds: Any = conn.execute(select(func.min(column), func.max(column)).select_from(source)).one()
    low, high = bounds
    if low is None:
        return None
    return IntRangeWalker(source, column, int(low), int(high), sizer)


class KeysetWalker:
    """Ranges of the primary key in index order, each ending at the n-th next key."""

    def __init__(self, source: Any, columns: list[ColumnElement[Any]], sizer: BatchSizer) -> None:
        self.source = source
        self.columns = columns
        self.sizer = sizer
        self._last: tuple[Any, ...] | None = None
        self._bound: tuple[Any, ...] | None = None
        self._done = False

    def _key(self) -> Any:
        return self.columns[0] if len(self.columns) == 1 else tuple_(*self.columns)

    def _value(self, values: tuple[Any, ...]) -> Any:
        return values[0] if len(self.columns) == 1 else tuple_(*values)

    def next_scope(self, conn: Connection) -> ColumnElement[bool] | None:
        """The keys after the last range up to the n-th next one (or to the end)."""
        if self._done:
            return None
        after = [] if self._last is None else [self._key() > self._value(self._last)]
        bound_query = (
            select(*self.columns)
            .select_from(self.source)
            .where(*after)
            .order_by(*self.columns)
            .offset(self.sizer.current() - 1)
            .limit(1)
        )
        row = conn.execute(bound_query).first()
        self._bound = None if row is None else tuple(row)
        upto = [] if self._bound is None else [self._key() <= self._value(self._bound)]
        return and_(true(), *after, *upto)

    def advance(self, removed: int) -> None:
        """Move past the last range; a range without an upper bound ended the walk."""
        if self._bound is None:
            self._done = True
        self._last = self._bound
