"""cancel_and_wait: a task that swallows its cancellation is cancelled again until it ends."""

from __future__ import annotations

import asyncio

from conveyor.runtime.loop import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def periodic() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a driver that returns a reply to a cancelled caller

    task = asyncio.create_task(periodic())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), timeout=10)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_failed_is_waited_for_and_its_error_retrieved() -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert task.done() and isinstance(task.exception(), RuntimeError)
