"""The test clock itself: every fake-time test relies on when it lets time pass."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import FakeClock


async def test_a_timeout_goes_off_at_its_own_time_when_a_sleeper_passes_it(
    clock: FakeClock,
) -> None:
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(10)
        woke.append(clock.monotonic())

    began = clock.monotonic()
    later = asyncio.create_task(sleeper())
    with pytest.raises(TimeoutError):
        async with clock.timeout(5):
            await asyncio.Event().wait()
    assert clock.monotonic() == began + 5 and woke == [], "before the sleeper, at 5 s"
    await later
    assert woke == [began + 10]


async def test_a_timeout_alone_does_not_move_the_clock(clock: FakeClock) -> None:
    began = clock.monotonic()
    async with clock.timeout(5):
        await asyncio.sleep(0.01)  # real time: an answer on the wire, say
    assert clock.monotonic() == began


async def test_a_zero_timeout_whose_block_ends_first_leaves_no_cancel_behind(
    clock: FakeClock,
) -> None:
    async with clock.timeout(0):
        pass
    await asyncio.sleep(0)  # a stray cancel would be raised here
    with pytest.raises(TimeoutError):
        async with clock.timeout(0):
            await asyncio.sleep(1)
