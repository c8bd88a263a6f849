"""Events are copied exactly, or their call fails with a code that says why: no number and no key
is changed on the way (``harvester.fetch.exactjson``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from harvester.fetch.exactjson import read_array
from harvester.run.job import harvest
from harvester.sim.server import events_for

from .conftest import FakeClock, canonical, make_settings, read_ndjson
from .hostile import serving


@pytest.mark.parametrize(
    "body",
    [
        b'[{"name":"create","time":1419032854964,"data":"{\\"a\\":1}"}]',
        b'[{"id": "ce-1", "name": "answer"}]\n',  # another spelling of the same
        b'[\n  {\n    "n": 1E2, "m": 1.50, "z": -0, "s": "\\u00e9\\/"\n  }\n]',
        b'[{"big":18446744073709551615,"low":-9223372036854775808,"f":0.1,"g":1e16}]',
        b"[]",
        b'\xef\xbb\xbf[{"name":"create"}]',  # a BOM before it: not JSON's, nothing of the data
    ],
)
def test_what_orjson_writes_back_as_the_same_values_passes(body: bytes) -> None:
    document, inexact = read_array(body)
    assert inexact is None
    assert orjson.loads(orjson.dumps(document)) == json.loads(body)


@pytest.mark.parametrize(
    ("element", "code"),
    [
        (b'{"cost":18446744073709551617}', "inexact-number"),
        (b'{"cost":-9223372036854775809}', "inexact-number"),
        (b'{"cost":0.1000000000000000000001}', "inexact-number"),
        (b'{"cost":1.5e-400}', "inexact-number"),
        (b'{"cost":1e400}', "inexact-number"),  # orjson does not read it at all
        (b'{"cost":' + b"9" * 5000 + b"}", "inexact-number"),  # past Python's own int limit
        (b'{"name":"create","name":"answer"}', "duplicate-key"),
        (b'{"data":{"x":1,"x":1}}', "duplicate-key"),
        (b'{"deep":' + b"[" * 400 + b"]" * 400 + b"}", "malformed-answer"),
        (b'{"name":"\\ud800"}', "malformed-answer"),  # a lone surrogate: no UTF-8 to write
    ],
)
def test_what_would_be_written_changed_is_named_element_by_element(
    element: bytes, code: str
) -> None:
    body = b'[{"name":"create"},' + element + b',{"name":"hangup"}]'
    _, inexact = read_array(body)
    assert inexact is not None
    assert inexact[0] is None and inexact[2] is None
    assert inexact[1] is not None and inexact[1].code == code
    assert len(inexact[1].detail) < 100


@pytest.mark.parametrize(
    "body", [b"", b"[", b"[1,]", b"[NaN]", b"[1] x", b"\xff[]", b"[" * 100_000 + b"]" * 100_000]
)
def test_what_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the client maps any of them the same)
        read_array(body)


def listed(call_id: str, day: str, extra: bytes = b"") -> bytes:
    record = orjson.dumps({"id": call_id, "startTime": f"{day}T12:00:00.000Z", "state": "x"})
    return record[:-1] + extra + b"}"


@pytest.mark.parametrize("keep_records", [True, False])
async def test_a_listed_record_that_cannot_be_copied_fails_its_call_only_when_kept(
    clock: FakeClock, tmp_path: Path, keep_records: bool
) -> None:
    exact, odd = "c-exactrecord", "c-oddrecord"

    async def calls(request: web.Request) -> web.Response:
        page = b"[" + listed(exact, "2026-11-25") + b","
        page += listed(odd, "2026-11-25", b',"chargeableDuration":18446744073709551617') + b"]"
        return web.Response(body=page, content_type="application/json")

    async def events(request: web.Request) -> web.Response:
        return web.json_response(events_for(request.match_info["call"]))

    app = web.Application()
    app.router.add_get("/v1/users/{user}/calls", calls)
    app.router.add_get("/v1/users/{user}/calls/{call}/events", events)
    flags: dict[str, Any] = {"input": None, "since": "2026-11-25", "until": "2026-11-26"}
    if keep_records:
        flags["calls_output"] = tmp_path / "out" / "calls.ndjson"
    async with serving(app) as url:

        class Api:
            base_url = url

        settings = make_settings(Api(), tmp_path, **flags)
        stats = await harvest(settings, clock=clock)

    harvested = [exact] if keep_records else [exact, odd]
    assert stats.completed and stats.ok == len(harvested)
    expected = [{"callId": c, **e} for c in harvested for e in events_for(c)]
    assert settings.output is not None
    assert canonical(read_ndjson(settings.output)) == canonical(expected)
    failures = read_ndjson(settings.failures_path)
    if keep_records:
        assert [(f["callId"], f["code"]) for f in failures] == [(odd, "inexact-number")]
        assert "--calls-output" in failures[0]["message"]
        assert [r["id"] for r in read_ndjson(flags["calls_output"])] == [exact]
    else:
        assert failures == []
