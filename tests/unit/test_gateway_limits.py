"""Gateway limits: admission, per-key rate and the cold-start queue (tables), and
429 / 503 with Retry-After over HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import pytest
from migserve_gateway.core.admission import Admission, AdmissionLimits
from migserve_gateway.core.auth import ANONYMOUS, AuthKeys
from migserve_gateway.core.errors import ApiError
from migserve_gateway.core.holding import ColdHolds, HoldLimits
from migserve_gateway.core.ratelimit import KeyRateLimiter, RateLimits
from migserve_gateway.settings import settings_from_env
from migserve_shared.errors import ConfigError
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
HTTP_LIMITS: list[tuple[dict[str, Any], str, str, int]] = [
    ({"max_concurrent_per_key": 1}, USER, USER, 429),
    ({"max_concurrent_per_key": 1}, USER, OTHER, 200),
    ({"max_in_flight": 1}, USER, OTHER, 503),
    ({"max_in_flight": 1}, USER, USER, 503),
    ({}, USER, USER, 200),
]


@pytest.mark.parametrize(("limits", "holder", "asker", "status"), HTTP_LIMITS)
async def test_limits_over_http(
    limits: dict[str, Any], holder: str, asker: str, status: int
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


# --- per-key rate: token bucket ------------------------------------------------------------
# (rate/s, burst, steps "key@t"), each step's outcome ("ok" or Retry-After seconds)
RATES: list[tuple[float, float, list[str], list[str | int]]] = [
    (2.0, 0.0, ["a@0", "a@0", "a@0"], ["ok", "ok", 1]),  # burst defaults to the rate
    (2.0, 0.0, ["a@0", "a@0", "a@0.5", "a@0.6"], ["ok", "ok", "ok", 1]),  # refills 2 a second
    (2.0, 0.0, ["a@0", "a@0", "b@0", "b@0"], ["ok", "ok", "ok", "ok"]),  # a bucket per key
    (0.5, 0.0, ["a@0", "a@0", "a@1.0"], ["ok", 2, 1]),  # Retry-After: whole seconds to a token
    (0.2, 3.0, ["a@0", "a@0", "a@0", "a@0"], ["ok", "ok", "ok", 5]),  # burst above the rate
    (1.0, 0.0, ["a@0", "a@100", "a@100"], ["ok", "ok", 1]),  # idle time fills up to burst only
    (0.0, 0.0, ["a@0"] * 5, ["ok"] * 5),  # 0: off
    (1.0, 0.0, [f"{ANONYMOUS}@0"] * 3, ["ok"] * 3),  # auth off: no per-key limit
]


@pytest.mark.parametrize(("rate", "burst", "steps", "outcomes"), RATES)
def test_rate_limit_table(
    rate: float, burst: float, steps: list[str], outcomes: list[str | int]
) -> None:
    limiter = KeyRateLimiter(RateLimits(rate_per_s=rate, burst=burst))
    got: list[str | int] = []
    for step in steps:
        key, at = step.split("@")
        try:
            limiter.take(key, float(at))
            got.append("ok")
        except ApiError as err:
            assert (err.status, err.code) == (429, "rate_limit_exceeded")
            assert "MIGSERVE_RATE_LIMIT_PER_KEY" in err.message
            got.append(int(err.headers["Retry-After"]))
    assert got == outcomes


# --- the cold-start queue -------------------------------------------------------------------
# steps (+model holds, -model releases), outcomes ("ok" or 503), held in all after
HOLDS: list[tuple[list[str], list[str | int], int]] = [
    (["+m", "+m", "+m"], ["ok", "ok", 503], 2),  # per model
    (["+m", "+m", "-m", "+m"], ["ok", "ok", "ok", "ok"], 2),
    (["+m", "+n", "+o", "+p"], ["ok", "ok", "ok", 503], 3),  # in all
    (["-m", "+m", "+m", "+m"], ["ok", "ok", "ok", 503], 2),  # a stray release changes nothing
]


@pytest.mark.parametrize(("steps", "outcomes", "total"), HOLDS)
def test_cold_hold_table(steps: list[str], outcomes: list[str | int], total: int) -> None:
    holds = ColdHolds(HoldLimits(max_per_model=2, max_total=3, retry_after_s=7))
    got: list[str | int] = []
    for step in steps:
        if step[0] == "-":
            holds.release(step[1:])
            got.append("ok")
            continue
        try:
            holds.hold(step[1:])
            got.append("ok")
        except ApiError as err:
            assert (err.code, err.headers) == ("cold_start_queue_full", {"Retry-After": "7"})
            assert "MIGSERVE_MAX_HELD" in err.message
            got.append(err.status)
    assert got == outcomes
    assert holds.total == total


async def test_rate_limit_over_http() -> None:
    settings = replace(SETTINGS, auth_disabled=False, rate_limit_per_key=0.5, rate_burst_per_key=2)
    async with gateway(settings, auth=KEYS) as gw:
        for _ in range(2):
            assert (
                await gw.client.post(CHAT, json=chat(), headers=bearer(USER))
            ).status_code == 200
        r = await gw.client.post(CHAT, json=chat(), headers=bearer(USER))
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await gw.client.post(CHAT, json=chat(), headers=bearer(OTHER))).status_code == 200
        assert await gw.metric("migserve_gateway_refused_total", reason="rate_limited") == 1
        assert await gw.metric("migserve_gateway_in_flight") == 0
        assert len(gw.jobs.jobs) == 3  # the refused request published nothing


async def test_cold_start_queue_is_bounded_per_model() -> None:
    settings = replace(SETTINGS, cold_start_timeout_s=5.0, max_held_per_model=2)
    async with gateway(settings, ready=False) as gw:
        gw.jobs.script = silent
        held = [await hold_one(gw, USER), await hold_one(gw, USER)]
        assert await gw.metric("migserve_gateway_cold_held") == 2
        r = await gw.client.post(CHAT, json=chat())
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5"
        error = r.json()["error"]
        assert (error["code"], error["type"]) == (
            "cold_start_queue_full",
            "service_unavailable_error",
        )
        assert "MIGSERVE_MAX_HELD_PER_MODEL" in error["message"]
        assert (
            await gw.metric("migserve_gateway_refused_total", reason="cold_start_queue_full") == 1
        )
        assert len(gw.jobs.jobs) == 2
        await finish(gw, 0, held[0])  # one answered: its place is free again
        assert await gw.metric("migserve_gateway_cold_held") == 1
        third = await hold_one(gw, USER)
        await finish(gw, 2, third)
        await finish(gw, 1, held[1])
        assert await gw.metric("migserve_gateway_cold_held") == 0
        assert await gw.metric("migserve_gateway_in_flight") == 0


async def test_requests_for_a_ready_model_are_not_held() -> None:
    settings = replace(SETTINGS, max_held_per_model=1, max_held=1)
    async with gateway(settings, ready=True) as gw:
        gw.jobs.script = silent
        held = [await hold_one(gw, USER), await hold_one(gw, USER)]
        assert await gw.metric("migserve_gateway_cold_held") == 0
        for i, task in enumerate(held):
            await finish(gw, i, task)


def test_limit_settings_from_env() -> None:
    s = settings_from_env(
        {
            "MIGSERVE_RATE_LIMIT_PER_KEY": "2.5",
            "MIGSERVE_RATE_BURST_PER_KEY": "10",
            "MIGSERVE_MAX_HELD_PER_MODEL": "7",
            "MIGSERVE_MAX_HELD": "9",
        }
    )
    assert s.rates == RateLimits(rate_per_s=2.5, burst=10.0)
    assert s.holds == HoldLimits(max_per_model=7, max_total=9)
    d = settings_from_env({})
    assert (d.rates.enabled, d.holds.max_per_model, d.holds.max_total) == (False, 256, 1024)
    for name, value in [("MIGSERVE_RATE_LIMIT_PER_KEY", "-1"), ("MIGSERVE_MAX_HELD", "0")]:
        with pytest.raises(ConfigError, match=f"{name}={value!r}"):
            settings_from_env({name: value})
