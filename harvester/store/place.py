"""Where a listing run stands in the API's call list: the place up to which every call is
committed, kept with each commit (``ListingPlace``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class _PageMark:
    """A listed page: where the list goes on after it, the oldest start it reached, and its
    calls not yet committed."""

    next_url: str
    oldest: datetime | None = None
    outstanding: int = 0


class ListingPlace:
    """The place in the call list up to which every call is committed: the next link after the
    last page whose calls all are, saved with each commit so that a resumed night need not list
    from the top. The pool says which calls each page brought; the sink, which got committed.
    """

    def __init__(self) -> None:
        self.cursor: str | None = None
        # The oldest start of the page before the cursor: the cursor's place in time, which
        # tells, of two places in the list, the earlier (newest first: the newer time).
        self.cursor_time: datetime | None = None
        self._pages: deque[_PageMark] = deque()
        self._page_of: dict[str, _PageMark] = {}
        self._page: _PageMark | None = None

    def page(self, next_url: str, oldest: datetime | None = None) -> None:
        """A page begins; the list goes on at ``next_url`` after it ("" at the end); ``oldest``
        is the oldest start it reached."""
        self._page = _PageMark(next_url, oldest)

    def expect(self, key: str) -> None:
        """``key``, of the current page, is on its way: the page waits for its commit."""
        assert self._page is not None
        self._page.outstanding += 1
        self._page_of[key] = self._page

    def page_claimed(self) -> None:
        """Every call of the current page has been claimed (and ``expect``-ed where new)."""
        assert self._page is not None
        self._pages.append(self._page)
        self._page = None
        self._advance()

    def committed(self, keys: Iterable[str]) -> None:
        """``keys`` are durable now."""
        if not self._page_of:
            return
        for key in keys:
            page = self._page_of.pop(key, None)
            if page is not None:
                page.outstanding -= 1
        self._advance()

    def _advance(self) -> None:
        while self._pages and self._pages[0].outstanding == 0:
            done = self._pages.popleft()
            self.cursor, self.cursor_time = done.next_url, done.oldest
