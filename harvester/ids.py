"""What a call id and a user id may look like.

Catapult ids are ``c-``/``u-`` plus base32 (``c-3rtok7ztulq5yttum5cinva``), shorter ones occur,
and the successor API uses hex groups with hyphens. We accept all of those and nothing that could
change a request path: no ``/``, ``?``, ``#``, ``%``, ``.``, whitespace or non-ASCII.
"""

from __future__ import annotations

import re
from typing import NamedTuple

CALL_ID = re.compile(r"c-[A-Za-z0-9-]{1,64}")
USER_ID = re.compile(r"u-[A-Za-z0-9-]{1,64}")


def is_call_id(value: str) -> bool:
    """True when ``value`` is safe to use as a call id in a request path."""
    return CALL_ID.fullmatch(value) is not None


def is_user_id(value: str) -> bool:
    """True when ``value`` is safe to use as a user id in a request path."""
    return USER_ID.fullmatch(value) is not None


class CallRef(NamedTuple):
    """A call as the ledger files it: ``key``, the id its record gives (for a line of the call
    list that names no call, the line's key), and ``line``, its input line (counted from 1; 0
    for a call of the API's list, which has none)."""

    key: str
    line: int
