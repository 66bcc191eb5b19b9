"""Counts that stop: how many rows a page, a list or a badge says there are, counted up to a bound.

A count of what a user may see grows with what she may see: an administrator's channel list counted
100,000 channels for its pager, a collaborator with 5,000 grants counted 50,000 on every page of the API.
As mature trackers do (GitLab's API drops its totals over 10,000 rows, most badges stop at "99+"), a count
here reads at most ``limit + 1`` rows and says "more than ``limit``" beyond: the database stops at the
bound (``COUNT(*)`` over a ``LIMIT``ed subquery), so the work is bounded by the bound, not by the site.
Every count of one request goes out as **one** statement (``bounded_counts``).

The bound is ``settings.DAQBROKER_COUNT_LIMIT`` (1,000); a pager counts up to the end of the page asked
for when that is further (reading page 60 of 24 costs a count to 1,441, as the page's own ``OFFSET`` reads
that far anyway). docs/pages.md#counts and docs/api.md#pagination say what users see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

# The furthest a count is taken whatever page is asked for: an offset past every row there could be still
# gets an empty page, not an integer the database cannot hold.
LARGEST_BOUND = 2**62


def count_limit() -> int:
    return settings.DAQBROKER_COUNT_LIMIT


def bound_for(end: int) -> int:
    """The bound of a count that must reach row ``end`` (the end of the page asked for)."""
    return min(max(count_limit(), end), LARGEST_BOUND)


@dataclass(frozen=True)
class BoundedCount:
    """``value`` rows, exactly when ``exact``; else more than ``limit`` (``value`` is then ``limit + 1``)."""

    value: int
    exact: bool
    limit: int

    def __str__(self) -> str:
        return f"{self.value:,}" if self.exact else f"{self.limit:,}+"

    def __bool__(self) -> bool:
        return self.value > 0

    def within(self, limit: int) -> BoundedCount:
        """The same count as a lower bound would have given it (``limit`` at most this one's)."""
        if limit > self.limit:
            raise ValueError(f"a count bounded at {self.limit:,} cannot say whether there are more than {limit:,}")
        return BoundedCount(value=min(self.value, limit + 1), exact=self.value <= limit, limit=limit)


def bounded_counts(querysets: dict[str, QuerySet], limit: int | None = None) -> dict[str, BoundedCount]:
    """Each queryset's number of rows, counting at most ``limit + 1`` of each: one statement for all of them
    (a scalar subquery per count, over the queryset's rows without their order, ``LIMIT``ed)."""
    limit = count_limit() if limit is None else limit
    parts: list[str] = []
    params: list[Any] = []
    names: list[str] = []
    empty: set[str] = set()
    alias = None
    for name, queryset in querysets.items():
        alias = alias or queryset.db
        if alias != queryset.db:
            raise ValueError("bounded_counts: every queryset must use the same database")
        rows = queryset.order_by().values("pk")[: limit + 1]
        try:
            sql, sql_params = rows.query.get_compiler(using=queryset.db).as_sql()
        except EmptyResultSet:  # ``.none()`` or an ``IN ()``: nothing to count
            empty.add(name)
            continue
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) bounded_{len(parts)})")
        params.extend(sql_params)
        names.append(name)
    values: dict[str, int] = dict.fromkeys(empty, 0)
    if parts:
        with connections[alias or "default"].cursor() as cursor:
            cursor.execute("SELECT " + ", ".join(parts), params)
            values.update(zip(names, cursor.fetchone(), strict=True))
    return {
        name: BoundedCount(value=min(values[name], limit + 1), exact=values[name] <= limit, limit=limit)
        for name in querysets
    }


def bounded_count(queryset: QuerySet, limit: int | None = None) -> BoundedCount:
    """``queryset``'s number of rows, counting at most ``limit + 1`` (``bounded_counts`` for one)."""
    return bounded_counts({"n": queryset}, limit)["n"]


def requested_page(raw: object) -> int:
    """The page number a query string asks for (1 when it is missing or not a positive number)."""
    try:
        number = int(str(raw)[:20])
    except (TypeError, ValueError):
        return 1
    return max(number, 1)


class BoundedPaginator(Paginator):
    """Django's paginator over a count that stops at the bound, or at the end of the page asked for.

    When the rows go on past the bound, ``count`` is the bound plus one (so the page asked for has a next
    one), ``exact`` is False and ``count_label`` reads "1,000+"; ``num_pages`` then counts only the pages
    the count reached: templates show "page n", not "of N", unless ``exact``.
    """

    def __init__(self, object_list, per_page, orphans=0, allow_empty_first_page=True, *, page: object = 1, **kwargs):
        super().__init__(object_list, per_page, orphans, allow_empty_first_page, **kwargs)
        self.bound = bound_for(requested_page(page) * int(per_page))

    @cached_property
    def bounded(self) -> BoundedCount:
        if not isinstance(self.object_list, QuerySet):  # a list: its length is at hand
            return BoundedCount(value=len(self.object_list), exact=True, limit=self.bound)
        return bounded_count(self.object_list, self.bound)

    @cached_property
    def count(self) -> int:
        return self.bounded.value

    @property
    def exact(self) -> bool:
        return self.bounded.exact

    @property
    def count_label(self) -> str:
        return str(self.bounded)

    @cached_property
    def num_pages(self) -> int:
        if self.exact:
            return super().num_pages
        return max(1, math.ceil(self.count / self.per_page))


class BoundedPaginationMixin:
    """For a ``ListView``: its pages counted by ``BoundedPaginator``. A view that has already counted the same
    rows (a status button's count) returns it from ``counted_rows``: the pager then takes it instead of
    counting again, when it reaches as far as the pager needs."""

    request: Any
    page_kwarg: str

    def counted_rows(self) -> BoundedCount | None:
        return None

    def get_paginator(self, queryset, per_page, orphans=0, allow_empty_first_page=True, **kwargs):
        page = self.request.GET.get(self.page_kwarg, 1)
        paginator = BoundedPaginator(queryset, per_page, orphans, allow_empty_first_page, page=page, **kwargs)
        known = self.counted_rows()
        if known is not None and (known.exact or known.limit == paginator.bound):
            paginator.bounded = known
        return paginator
