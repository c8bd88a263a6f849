"""What flows through the pool: a source's batches, the ledger key of each record, the call a
worker takes on and the failure it files, and the one error of many that ends a run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import NamedTuple

from harvester.credentials import redact_urls_in
from harvester.errors import FailureCode, FatalApiError, HarvesterError, InputError, OutputError
from harvester.ids import CallRef
from harvester.input.listing import ListedCall
from harvester.input.records import InvalidRecord, Record
from harvester.logs import clip
from harvester.store.sink import Failure, Verdict, line_key

log = logging.getLogger("harvester")


class SourceBatch(NamedTuple):
    """What a source yields: records, and for a listing, the next link after them ("" at the
    end) and the oldest start its page reached (where in time that place in the list is)."""

    records: list[Record | ListedCall]
    next_url: str | None = None
    oldest: datetime | None = None


# How the records of a batch are claimed: each call -> what to do with it.
Claim = Callable[[list[CallRef]], Awaitable[list[Verdict]]]


class Call(NamedTuple):
    """A call taken on: what a worker fetches, and what its outcome is filed under. (A named
    tuple: one is made for every call, at half a frozen dataclass's cost.)"""

    call_id: str
    line: int  # its input line; 0 for a call of the API's list, which has none
    listed: bytes = b""  # its record in the API's list, kept for --calls-output

    def failure(
        self, code: str, message: str, status: int | None = None, attempts: int = 0
    ) -> Failure:
        """Its line in the failures file."""
        return Failure(
            key=self.call_id,
            line=self.line,
            call_id=self.call_id,
            status=status,
            code=code,
            message=message,
            attempts=attempts,
            listed=self.listed,
        )


def unexpected(call: Call, error: Exception) -> Failure:
    # Not our words, so possibly a library's holding a URL: its credentials are cut out.
    described = clip(redact_urls_in(f"{type(error).__name__}: {error}"))
    log.warning(
        "call %s failed: unexpected %s (listed as failed, code unexpected-error; please "
        "report it with this log)",
        call.call_id,
        described,
        exc_info=log.isEnabledFor(logging.DEBUG),
    )
    return call.failure(FailureCode.UNEXPECTED_ERROR, described, None, 1)


def the_error(error: BaseException) -> BaseException:
    """Of a task group's errors, the one that matters: the disk's, then the API's, then the
    input's, then any other."""
    leaves = list(_leaves(error))
    for kind in (OutputError, FatalApiError, InputError, HarvesterError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def key_of(record: Record | ListedCall) -> CallRef:
    """The ledger key and input line of a record."""
    if isinstance(record, CallRef):
        return record
    if isinstance(record, InvalidRecord):
        return CallRef(line_key(record.line), record.line)
    return CallRef(record.call_id, 0)
