"""Gateway limits: the admission core (tables) and 429 / 503 with Retry-After over HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest
from migserve_gateway.core.admission import Admission, AdmissionLimits
from migserve_gateway.core.auth import ANONYMOUS, AuthKeys
from migserve_gateway.core.errors import ApiError
from migserve_shared.messages import JobEnd, TokenChunk
from test_gateway_http import CHAT, SETTINGS, Gateway, chat, gateway, silent

# steps (+key admits, -key releases), each step's outcome ("ok", 429 or 503), in flight after
ADMISSION: list[tuple[list[str], list[str | int], int]] = [
    (["+a", "+a", "+a"], ["ok", "ok", 429], 2),
    (["+a", "+a", "-a", "+a"], ["ok", "ok", "ok", "ok"], 2),
    (["+a", "+a", "+b", "+b"], ["ok", "ok", "ok", "ok"], 4),
    (["+a", "+a", "+b", "+b", "+b"], ["ok", "ok", "ok", "ok", 503], 4),
    (["+a", "+b", "+c", "+d", "+e"], ["ok", "ok", "ok", "ok", 503], 4),
    ([f"+{ANONYMOUS}"] * 5, ["ok", "ok", "ok", "ok", 503], 4),
    (["-a", "+a", "+a", "+a"], ["ok", "ok", "ok", 429], 2),  # a stray release changes nothing
    (["+a", "-b", "-a", "-a"], ["ok", "ok", "ok", "ok"], 0),
]


@pytest.mark.parametrize(("steps", "outcomes", "in_flight"), ADMISSION)
def test_admission_table(steps: list[str], outcomes: list[str | int], in_flight: int) -> None:
    admission = Admission(AdmissionLimits(max_in_flight=4, max_per_key=2, retry_after_s=3))
    got: list[str | int] = []
    for step in steps:
        key = step[1:]
        if step[0] == "-":
            admission.release(key)
            got.append("ok")
            continue
        try:
            admission.admit(key)
            got.append("ok")
        except ApiError as err:
            assert err.headers == {"Retry-After": "3"}
            assert ("MIGSERVE_MAX_IN_FLIGHT" if err.status == 503 else "PER_KEY") in err.message
            got.append(err.status)
    assert got == outcomes
    assert admission.in_flight == in_flight


USER, OTHER = "sk-u1", "sk-u2"
KEYS = AuthKeys.from_keys([USER, OTHER], "sk-admin")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def hold_one(gw: Gateway, key: str) -> asyncio.Task[httpx.Response]:
    """A request whose job stays silent until the test answers it."""
    before = len(gw.jobs.jobs)
    task = asyncio.create_task(gw.client.post(CHAT, json=chat(), headers=bearer(key)))
    async with asyncio.timeout(2):
        while len(gw.jobs.jobs) == before:
            await asyncio.sleep(0.005)
    return task


async def finish(gw: Gateway, index: int, task: asyncio.Task[httpx.Response]) -> None:
    gw.jobs.reply(gw.jobs.jobs[index], TokenChunk(text="ok", index=0), JobEnd())
    assert (await task).status_code == 200


# (limits, the key already holding a request, the key asking next, expected status)
HTTP_LIMITS: list[tuple[dict[str, int], str, str, int]] = [
    ({"max_concurrent_per_key": 1}, USER, USER, 429),
    ({"max_concurrent_per_key": 1}, USER, OTHER, 200),
    ({"max_in_flight": 1}, USER, OTHER, 503),
    ({"max_in_flight": 1}, USER, USER, 503),
    ({}, USER, USER, 200),
]


@pytest.mark.parametrize(("limits", "holder", "asker", "status"), HTTP_LIMITS)
async def test_limits_over_http(
    limits: dict[str, int], holder: str, asker: str, status: int
) -> None:
    settings = replace(SETTINGS, auth_disabled=False, **limits)
    async with gateway(settings, auth=KEYS) as gw:
        gw.jobs.script = silent
        held = await hold_one(gw, holder)
        if status == 200:
            second = await hold_one(gw, asker)
            await finish(gw, 1, second)
        else:
            r = await gw.client.post(CHAT, json=chat(), headers=bearer(asker))
            assert r.status_code == status, r.text
            assert r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert error["code"] == ("rate_limit_exceeded" if status == 429 else "overloaded")
            reason = "rate_limited" if status == 429 else "overloaded"
            assert await gw.metric("migserve_gateway_bad_requests_total", reason=reason) == (
                1 if status == 429 else 0
            )
            assert len(gw.jobs.jobs) == 1
        await finish(gw, 0, held)
        # the slots came back: the asker gets in now
        again = await hold_one(gw, asker)
        await finish(gw, len(gw.jobs.jobs) - 1, again)
        assert await gw.metric("migserve_gateway_in_flight") == 0
