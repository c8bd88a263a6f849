"""Output lines: each event exactly as the API sent it, plus callId."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from harvester.store.ndjson import event_lines, failure_line

EVENTS: list[dict[str, Any]] = [
    {"id": "ce-1", "time": "2012-09-19T13:55:41.343Z", "name": "create"},
    {"id": "ce-2", "time": 1419032854964, "name": "answer"},
    {"name": "CHANNEL_EXECUTE", "data": '{"applicationName":"park"}'},
    {"name": "hangup", "data": "NORMAL_CLEARING", "extra": {"nested": [1, 2.5, None, True]}},
    {"name": "speak", "data": ""},
    {"name": "ünïcødé ☎", "data": "line\nbreak \u2028"},
    {},
]


def test_each_event_keeps_every_field_and_gains_call_id() -> None:
    lines = event_lines("c-abc", EVENTS).splitlines()
    assert [orjson.loads(line) for line in lines] == [{"callId": "c-abc", **e} for e in EVENTS]
    assert all(line.startswith(b'{"callId":"c-abc"') for line in lines)


def test_a_data_string_holding_json_stays_a_string() -> None:
    (line,) = event_lines("c-abc", [EVENTS[2]]).splitlines()
    assert orjson.loads(line)["data"] == '{"applicationName":"park"}'


@pytest.mark.parametrize("theirs", ["c-another", None, 7])
def test_an_event_is_filed_under_the_call_it_was_fetched_for(theirs: object) -> None:
    # An answer's own callId (another call's, null, anything) never moves an event elsewhere.
    line = event_lines("c-abc", [{"callId": theirs, "name": "x"}])
    assert line == b'{"callId":"c-abc","name":"x"}\n'


@pytest.mark.parametrize("events", [[], EVENTS])
def test_lines_end_with_a_newline_each(events: list[dict[str, Any]]) -> None:
    text = event_lines("c-abc", events)
    assert text.count(b"\n") == len(events)
    assert text == b"" or text.endswith(b"\n")


def test_failure_lines_have_the_documented_fields() -> None:
    record = orjson.loads(failure_line("c-x", 404, "call-not-found", "gone", 1))
    assert record == {
        "callId": "c-x",
        "status": 404,
        "code": "call-not-found",
        "message": "gone",
        "attempts": 1,
    }


def test_a_line_naming_no_call_keeps_its_ledger_key_in_its_own_field() -> None:
    """Its key is stored (``inputLine``), not read back out of its message; a file written
    before keeps being read by its message."""
    from harvester.store.failures import _key_of_line
    from harvester.store.ledger import line_key
    from harvester.store.ndjson import Failure

    failure = Failure(
        key=line_key(7),
        line=7,
        call_id=None,
        status=None,
        code="invalid-input",
        message="not valid JSON (at byte 3)",  # says nothing of the line
    )
    record = orjson.loads(failure.as_line())
    assert record["inputLine"] == 7 and record["callId"] is None
    assert _key_of_line(failure.as_line()) == line_key(7)
    earlier = failure_line(None, None, "invalid-input", "input line 9: not a call id", 0)
    assert "inputLine" not in orjson.loads(earlier)
    assert _key_of_line(earlier) == line_key(9)
    named = failure_line("c-abc", 404, "call-not-found", "gone", 1)
    assert "inputLine" not in orjson.loads(named) and _key_of_line(named) == "c-abc"
