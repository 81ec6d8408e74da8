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
