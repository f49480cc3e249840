"""Fixtures shared by every test layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from migserve_cli.nats_server import NatsServer, prepare_auth, start_nats_server
from migserve_shared.bus import connect, ensure_jetstream
from migserve_shared.env import NatsSettings
from migserve_shared.permissions import stack_users
from nats.aio.client import Client as NATS


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a random loopback port."""
    server = start_nats_server(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


#: the nodes whose agents ``nats_auth_server`` admits (one NATS user each)
AUTH_NODES = ("node-1", "node-2")


@pytest.fixture
def nats_auth_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server that admits only migserve's users, as the local stack's does.

    Users and rights come from ``permissions.stack_users(AUTH_NODES)``;
    ``server.auth.settings(server.url, user)`` connects as one of them, and
    ``server.log_file`` holds the server's log (permission violations included).
    Nothing is created on it: connect as ``admin`` and ``ensure_jetstream`` first.
    """
    workdir = tmp_path / "nats-auth"
    auth = prepare_auth(workdir, stack_users(AUTH_NODES))
    server = start_nats_server(workdir, auth=auth, log_file=workdir / "nats-server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A connected client with migserve's streams and buckets created."""
    client = await connect(NatsSettings(url=nats_server.url, name="test"))
    await ensure_jetstream(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail any async test that leaves asyncio tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    if leaked:
        for task in leaked:
            task.cancel()
        pytest.fail(f"test leaked asyncio tasks: {[t.get_name() for t in leaked]}")
