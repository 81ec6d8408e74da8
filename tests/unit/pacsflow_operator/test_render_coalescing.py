"""Router renders: a burst of new use cases settles into one render per router; an edit renders at once."""

from __future__ import annotations

import asyncio

from kubernetes.client import Configuration

from pacsflow_operator.handlers.controller import Controller
from pacsflow_operator.kube import Kube
from pacsflow_operator.settings import OperatorSettings


def _controller() -> Controller:
    return Controller(Kube(Configuration()), OperatorSettings())


def test_a_burst_of_creations_costs_one_render():
    ctl, renders = _controller(), []

    async def work() -> int:
        renders.append(len(renders))
        await asyncio.sleep(0.01)  # the ConfigMap apply
        return len(renders)

    async def burst() -> list[int | None]:
        # 40 use cases of one router arriving within the settle window (kopf calls the handlers concurrently).
        return await asyncio.gather(*(ctl._serialised(("DicomRouter", "ns", "r"), False, work, settle=0.05)
                                      for _ in range(40)))

    results = asyncio.run(burst())
    assert renders == [0]
    assert results.count(None) == 39  # covered by the one render


def test_without_settling_requests_that_wait_for_a_render_are_still_coalesced_and_edits_do_not_wait():
    ctl, renders = _controller(), []

    async def work() -> None:
        renders.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)

    async def edits() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(ctl._serialised(("DicomRouter", "ns", "r"), False, work) for _ in range(5)))
        return renders[0] - start

    first_after = asyncio.run(edits())
    assert first_after < 0.04  # no settle delay for an edit
    assert len(renders) == 2  # the first renders; the four that waited meanwhile share one more render


def test_a_long_burst_renders_at_most_every_settle_max_and_once_more_after_it_ends():
    """Creations keep coming faster than the quiet time: renders happen every settle_max while the burst goes on
    (not only at its end), and the last render starts after the last creation (none is left uncovered)."""
    ctl, renders = _controller(), []
    key = ("DicomRouter", "ns", "r")

    async def work() -> None:
        renders.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.01)

    async def burst() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start, tasks = loop.time(), []
        for _ in range(60):  # one every 10 ms for 0.6 s: never 0.2 s quiet
            tasks.append(asyncio.create_task(ctl._serialised(key, False, work, settle=0.2, settle_max=0.25)))
            await asyncio.sleep(0.01)
        last = loop.time()
        await asyncio.gather(*tasks)
        return start, last

    start, last = asyncio.run(burst())
    assert 2 <= len(renders) <= 6
    assert renders[0] - start < 0.55  # during the burst, bounded by settle_max (not at its end)
    assert renders[-1] >= last  # the last creation is covered by a render that started after it
    assert ctl._serial[key].done == 60


def test_a_short_burst_is_rendered_once_after_it_goes_quiet():
    ctl, renders = _controller(), []
    key = ("DicomRouter", "ns", "r")

    async def work() -> None:
        renders.append(asyncio.get_running_loop().time())

    async def burst() -> float:
        loop, tasks = asyncio.get_running_loop(), []
        for _ in range(15):  # one every 10 ms for 0.15 s, longer than the quiet time but each gap shorter
            tasks.append(asyncio.create_task(ctl._serialised(key, False, work, settle=0.1, settle_max=1.0)))
            await asyncio.sleep(0.01)
        last = loop.time()
        await asyncio.gather(*tasks)
        return last

    last = asyncio.run(burst())
    assert len(renders) == 1
    assert renders[0] >= last + 0.05  # waited for the quiet time after the last creation
