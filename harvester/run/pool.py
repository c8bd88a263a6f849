"""The pool: call list -> queue -> a fixed pool of workers -> client -> sink.

The producer takes the call list batch by batch, has each batch's records claimed (not done in
an earlier run, not already on their way), sends malformed records straight to the sink as
failures, keeps at most ``QUEUED`` calls a worker queued, and closes the queue with one ``None``
per worker; that is what ends the workers.

Stopping: ``stop`` set (by a signal) makes the producer stop, drops what is queued, lets the
workers finish their calls for ``grace`` seconds, then commits. Any error in any task (a
``FatalApiError``, an unreadable input) cancels the task group: no new requests go out after
it; what is done is committed (unless the disk itself failed), and the one error that matters
is raised. Calls that failed without an answer from the API are held back by an
``OutageGuard``, so an outage never lands in the failures file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import orjson

from harvester.clock import Clock
from harvester.credentials import redact_url
from harvester.errors import (
    ApiUnavailable,
    CallFailed,
    FailureCode,
    FatalApiError,
    HarvesterError,
    InputError,
    OutputError,
    RateLimited,
    Stopping,
    TransientError,
)
from harvester.fetch.client import CallEventsClient
from harvester.fetch.retry import Retrier
from harvester.ids import is_call_id
from harvester.input.listing import ListedCall
from harvester.input.records import InvalidRecord, Record
from harvester.logs import per_call
from harvester.run.calls import Call, Claim, SourceBatch, key_of, the_error, unexpected
from harvester.run.outage import OutageGuard, about_the_url
from harvester.settings.config import Settings
from harvester.settings.shard import Shard
from harvester.stats import RunStats
from harvester.store.sink import Failure, Sink, Verdict, event_lines, line_key

log = logging.getLogger("harvester")

# Calls in a row that fail after all retries without an answer (or with a 5xx), before the API
# is asked whether it is down: at least this many, and at least twice the concurrency, since
# the calls in flight when it went down fail together. Before anything has worked on the events
# endpoint in the job, ten times as many (calls that fail on their own at the top of a list
# would otherwise stop every run there); before anything has answered at all, the first.
OUTAGE_CALLS = 20
UNPROVEN_FACTOR = 10
# Calls queued for the workers, at most, per worker.
QUEUED = 2


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What the pool takes of the settings: its workers, their grace on a stop, whether the
    listed calls' records are kept, and the API and user its messages name."""

    concurrency: int
    grace: float
    keeps_records: bool
    base_url: str
    user_id: str

    @classmethod
    def of(cls, settings: Settings) -> PoolSettings:
        return cls(
            concurrency=settings.concurrency,
            grace=settings.grace,
            keeps_records=settings.calls_output is not None,
            base_url=settings.base_url,
            user_id=settings.user_id,
        )


class Pool:
    """Takes every call of a source through a fixed number of workers into the sink."""

    def __init__(
        self,
        settings: PoolSettings,
        stats: RunStats,
        client: CallEventsClient,
        retrier: Retrier,
        sink: Sink,
        clock: Clock,
        *,
        claim: Claim,
        shard: Shard | None = None,
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._client = client
        self._retrier = retrier
        self._sink = sink
        self._clock = clock
        self._claim = claim
        self._shard = shard
        self._outage = OutageGuard(self._threshold, self._probe, self._fail)
        self._outage_calls = max(OUTAGE_CALLS, 2 * settings.concurrency)
        # A call harvested in this job (this run's latest, else an earlier run's): the outage
        # probe. None while nothing has worked on the events endpoint in the job.
        self._last_ok: str | None = None
        self._url_confirmed = False  # the base URL and user are right: something worked
        self._input_error: InputError | None = None  # the call list broke off here
        # Calls queued for the workers: at most QUEUED per worker. The producer tops the queue
        # up once it is down to one per worker (``_hungry``): one wake-up of the producer for
        # every ``concurrency`` calls, where a queue bounded by its own size (``maxsize``)
        # would wake it for every call.
        self._queue: asyncio.Queue[Call | None] = asyncio.Queue()
        self._queue_full = QUEUED * settings.concurrency
        self._hungry = asyncio.Event()
        self._keeps_records = settings.keeps_records

    async def run(self, batches: AsyncGenerator[SourceBatch, None], stop: asyncio.Event) -> bool:
        """Take every call of ``batches`` to an outcome, committed; False when ``stop`` cut it
        short. Raises the one error that matters (see the module's docstring)."""
        sink = self._sink
        self._last_ok = await sink.harvested_call()
        try:
            async with asyncio.TaskGroup() as group:
                committing = group.create_task(sink.run())
                producer = group.create_task(self._produce(batches))
                workers = [
                    group.create_task(self._work()) for _ in range(self._settings.concurrency)
                ]
                stopper = group.create_task(self._stop_on(stop, producer, workers))
                await asyncio.wait([producer, *workers])
                stopper.cancel()
                if not stop.is_set():
                    # Stopped early, held calls stay undone (the next run takes them on);
                    # at the end, they are failures if the API is up.
                    await self._outage.settle()
                await sink.finish(committing)
        except Exception as caught:  # the task group's errors, or the outage guard's
            error = the_error(caught)
            if not isinstance(error, OutputError):
                await sink.commit()  # keep what was done before the run stopped
            raise error from (error.__cause__ or caught)  # its own cause, if it has one
        if self._input_error is not None:
            raise self._input_error
        return not stop.is_set()

    async def _stop_on(
        self, stop: asyncio.Event, producer: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        await stop.wait()
        producer.cancel()
        # Queued calls were never started: the next run takes them on.
        while not self._queue.empty():
            if self._queue.get_nowait() is not None:
                self._stats.calls -= 1
        for _ in workers:
            self._queue.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(self._settings.grace):
                await asyncio.wait(workers)
        late = [task for task in workers if not task.done()]
        if late:
            log.info(
                "grace period over: abandoning %d calls in flight (fetched again next run)",
                len(late),
            )
        for task in late:
            task.cancel()

    # -- the producer ---------------------------------------------------------------------------

    async def _produce(self, batches: AsyncGenerator[SourceBatch, None]) -> None:
        try:
            await self._take_on_all(batches)
        except InputError as exc:
            self._input_error = exc  # raised once the calls read before it are done
        except Stopping:
            return  # a list page not asked for: the next run reads on from the last place
        for _ in range(self._settings.concurrency):
            self._queue.put_nowait(None)

    async def _take_on_all(self, batches: AsyncGenerator[SourceBatch, None]) -> None:
        stats = self._stats
        place = self._sink.place
        queue, hungry, full = self._queue, self._hungry, self._queue_full
        async with contextlib.aclosing(batches):
            async for records, next_url, oldest in batches:
                keyed = [key_of(record) for record in records]
                if self._shard is not None:
                    owns = self._shard.owns
                    mine = [i for i, (key, _) in enumerate(keyed) if owns(key)]
                    stats.other_shard += len(keyed) - len(mine)
                    records = [records[i] for i in mine]
                    keyed = [keyed[i] for i in mine]
                verdicts = await self._claim(keyed)
                if place is not None and next_url is not None:
                    place.page(next_url, oldest)
                for record, (key, _), verdict in zip(records, keyed, verdicts, strict=True):
                    if verdict is Verdict.DUPLICATE:
                        stats.duplicates += 1
                    elif verdict is Verdict.DONE:
                        stats.skipped += 1
                    else:
                        if place is not None:
                            place.expect(key)
                        call = self._call_of(record)
                        if isinstance(call, Failure):
                            stats.calls += 1
                            await self._fail(call)
                            continue
                        if queue.qsize() >= full:
                            hungry.clear()
                            await hungry.wait()
                        queue.put_nowait(call)
                        stats.calls += 1  # not before the wait: a cancelled wait took nothing on
                if place is not None and next_url is not None:
                    place.page_claimed()

    def _call_of(self, record: Record | ListedCall) -> Call | Failure:
        """The call ``record`` names, to be fetched; or, when it names none that may be sent
        (counted as invalid) or cannot be kept as listed, the failure it is."""
        if isinstance(record, InvalidRecord):
            self._stats.invalid += 1
            return Failure(
                key=line_key(record.line),
                line=record.line,
                call_id=None,
                status=None,
                code=FailureCode.INVALID_INPUT,
                message=f"input line {record.line}: {record.reason}",
            )
        if isinstance(record, ListedCall):
            call = Call(record.call_id, 0, record.record)
            if record.inexact is not None and self._keeps_records:
                reason = (
                    f"its record in the call list {record.inexact.detail}: it cannot be written "
                    "to --calls-output as the API sent it, so the call is listed as failed"
                )
                return call.failure(record.inexact.code, reason, 200)
        else:
            call = Call(record.key, record.line)
        if is_call_id(call.call_id):
            return call
        self._stats.invalid += 1
        reason = "not a call id (c- and up to 64 letters, digits or hyphens); not sent"
        return call.failure(FailureCode.INVALID_CALL_ID, reason)

    # -- the workers ----------------------------------------------------------------------------

    async def _work(self) -> None:
        stats = self._stats
        events_of = self._client.events
        outage = self._outage
        queue, hungry, low = self._queue, self._hungry, self._settings.concurrency
        while (call := await queue.get()) is not None:
            if queue.qsize() <= low:
                hungry.set()
            call_id = call.call_id
            try:
                found = await self._retrier.run(events_of, call_id)
                lines = event_lines(call_id, found)
            except (CallFailed, RateLimited) as exc:  # answers: the API is up (429s too)
                failure = call.failure(exc.code, exc.message, exc.status, exc.attempts)
                if about_the_url(exc.status) and not self._url_confirmed:
                    # Unknown calls, or a base URL with a wrong path or host: until one call
                    # has worked, a 404 or a redirect is the API's word against the URL as
                    # much as the call's.
                    await outage.unanswered(failure)
                    continue
                if outage.held:
                    await outage.answered()
                await self._fail(failure)
                continue
            except TransientError as exc:
                failure = call.failure(exc.code, exc.message, exc.status, exc.attempts)
                await outage.unanswered(failure)
                continue
            except orjson.JSONEncodeError:  # nested past what JSON can be written at
                # orjson's words are not ours: what it refuses is said here.
                message = "an event cannot be written as JSON (nested too deep, or not JSON)"
                await self._fail(call.failure(FailureCode.MALFORMED_ANSWER, message, 200, 1))
                continue
            except Stopping:
                return  # not sent: the call is left for the next run
            except HarvesterError:
                raise
            except Exception as exc:  # what nobody foresaw fails this call, never the run
                await self._fail(unexpected(call, exc))
                continue
            if outage.held:
                await outage.answered()
            self._last_ok, self._url_confirmed = call_id, True
            stats.ok += 1
            stats.events += len(found)
            await self._sink.ok(call_id, call.line, lines, len(found), call.listed)

    def _threshold(self) -> int:
        """How many held failures make the outage guard ask whether the API is down."""
        if not self._stats.statuses:
            return 1  # nothing has answered at all: ask at once (and be told within seconds)
        if self._last_ok is None and self._outage.holds_unanswered:
            return UNPROVEN_FACTOR * self._outage_calls
        return self._outage_calls

    async def _probe(self, held: list[Failure]) -> None:
        """A request that worked before in this job, else the first page of the call list,
        which works whenever the base URL and user are right (see ``OutageGuard``). Raises
        ``ApiUnavailable`` itself when the API never answered in this run, or when the events
        endpoint has not worked for any call of the job while unanswered failures are held."""
        settings = self._settings
        api = redact_url(settings.base_url)
        if not self._stats.statuses:  # no answer at all: asking again would tell nothing more
            last = held[-1]
            raise ApiUnavailable(
                None,
                FailureCode.API_UNAVAILABLE,
                f"the API at {api} never answered in this run: {_calls(len(held))} failed "
                f"without an answer (last: {last.code}: {last.message}). Check the base URL's "
                "host and port, the network and any proxy. Nothing is lost: run the same "
                "command again once it answers",
            )
        if self._last_ok is not None:
            await self._retrier.run(self._client.events, self._last_ok)
            return
        try:
            await self._retrier.run(self._client.calls_page, self._client.calls_url(1))
            self._url_confirmed = True
        except CallFailed as exc:
            if not about_the_url(exc.status):
                raise
            raise FatalApiError(
                exc.status,
                FailureCode.WRONG_BASE_URL,
                f"the API at {api} has no call list for user {settings.user_id} ({exc.status} "
                f"{exc.code}: {exc.message}), so its answers for calls say nothing of the "
                "calls: check the base URL and the user id. Nothing was listed as failed; run "
                "the same command again once they are right",
            ) from exc
        except TransientError as exc:
            last = held[-1]
            raise ApiUnavailable(
                exc.status,
                FailureCode.API_UNAVAILABLE,
                f"{_calls(len(held))} in a row failed after every retry (last: {last.code}: "
                f"{last.message}), and so did the call list at {api} ({exc}). Nothing is lost: "
                "once the API is back (check the base URL and the network too), run the same "
                "command again and it takes them on",
            ) from exc
        unanswered = [failure for failure in held if not about_the_url(failure.status)]
        if unanswered:
            last = unanswered[-1]
            raise ApiUnavailable(
                last.status,
                FailureCode.API_UNAVAILABLE,
                f"the events endpoint at {api} has not worked for any call of this job: "
                f"{_calls(len(unanswered))} in a row failed after every retry (last: {last.code}: "
                f"{last.message}), though the API's call list answers. It is down, not the "
                "calls: nothing is lost; run the same command again once it works",
            )

    async def _fail(self, failure: Failure) -> None:
        per_call(
            logging.WARNING,
            "call-failed",
            "call %s failed: %s %s",
            failure.call_id,
            failure.code,
            failure.message,
            call_id=failure.call_id,
            status=failure.status,
            code=failure.code,
            attempts=failure.attempts,
        )
        self._stats.count_failure(failure.code)
        await self._sink.failed(failure)


def _calls(count: int) -> str:
    return f"{count} call" if count == 1 else f"{count} calls"
