"""Connecting to NATS: credentials, the user's own inbox prefix, TLS, reconnects.

``connect`` is re-exported by ``bus``. Secrets never reach a log line or an
error message: a password file is read here, and URLs are shown redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError

from migserve_shared.env import NatsSettings, redact_url
from migserve_shared.errors import ConfigError, MigserveError
from migserve_shared.permissions import default_inbox_prefix

log = logging.getLogger(__name__)


async def connect(settings: NatsSettings, *, connect_timeout: float = 5.0) -> NATS:
    """Connect with unbounded reconnects and callbacks that log instead of raising.

    Credentials come from ``settings`` (a password file is read here; a bad
    one raises ConfigError naming its variable). Replies arrive under the
    user's own inbox prefix (``permissions.default_inbox_prefix``), the only
    inboxes its NATS permissions let it subscribe to. No secret is logged.

    An unreachable server is retried until it answers; a server that refuses
    the credentials, or a TLS handshake that fails (certificate not verified,
    client certificate missing), raises NatsConnectError at once: retrying
    cannot help.
    """
    nc = NATS()
    refused: list[Exception] = []
    refused_event = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if not nc.is_connected and _is_refusal(exc) and nc.stats["reconnects"] == 0:
            refused.append(exc)
            refused_event.set()
        log.warning("nats error: %s", exc, extra={"nats_error": type(exc).__name__})

    async def on_disconnected() -> None:
        if nc.is_closed or nc.is_draining:
            return  # a shutdown we asked for, not an outage
        log.warning("nats disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    options: dict[str, Any] = {
        **connect_options(settings),
        "servers": [settings.url],
        "name": settings.name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
    }
    connecting = asyncio.create_task(nc.connect(**options), name="nats-connect")
    waiting = asyncio.create_task(refused_event.wait(), name="nats-connect-refused")
    connected = False
    try:
        await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        connected = (
            not refused
            and connecting.done()
            and not connecting.cancelled()
            and connecting.exception() is None
        )
    finally:
        waiting.cancel()
        connecting.cancel()
        await asyncio.gather(connecting, waiting, return_exceptions=True)
        if not connected:
            with contextlib.suppress(Exception):
                await nc.close()
    if not connected:
        cause = refused[0] if refused else connecting.exception()
        who = settings.user or "a client without a user"
        raise NatsConnectError(
            f"NATS at {redact_url(settings.url)} refused {who}: {cause}"
        ) from cause
    return nc


def _is_refusal(exc: Exception) -> bool:
    if isinstance(exc, AuthorizationError | ssl.SSLError):  # TLS: certificates, handshake
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


class NatsConnectError(MigserveError):
    """NATS refused the connection (authorization, TLS) or could not be reached."""


def connect_options(settings: NatsSettings) -> dict[str, Any]:
    """nats.connect keyword arguments for credentials, inbox prefix and TLS."""
    kwargs: dict[str, Any] = {
        "inbox_prefix": settings.inbox_prefix or default_inbox_prefix(settings.user)
    }
    if settings.creds_file:
        if not Path(settings.creds_file).is_file():
            raise ConfigError(f"MIGSERVE_NATS_CREDS={settings.creds_file!r} is not a file")
        kwargs["user_credentials"] = settings.creds_file
    if settings.user:
        kwargs["user"] = settings.user
        kwargs["password"] = _password(settings)
    if settings.token:
        kwargs["token"] = settings.token
    tls = _tls_context(settings)
    if tls is not None:
        kwargs["tls"] = tls
    return kwargs


def _password(settings: NatsSettings) -> str:
    if settings.password is not None:
        return settings.password
    path = settings.password_file
    if not path:
        raise ConfigError(
            f"MIGSERVE_NATS_USER={settings.user!r} has no MIGSERVE_NATS_PASSWORD_FILE"
        )
    try:
        password = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"MIGSERVE_NATS_PASSWORD_FILE={path!r} cannot be read: {exc.strerror}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"MIGSERVE_NATS_PASSWORD_FILE={path!r} is not text") from exc
    if not password:
        raise ConfigError(f"MIGSERVE_NATS_PASSWORD_FILE={path!r} is empty")
    return password


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca_file or settings.tls_cert_file or settings.url.startswith("tls://")):
        return None
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"MIGSERVE_NATS_TLS_CA={settings.tls_ca_file!r} is not a readable CA bundle: {exc}"
        ) from exc
    if settings.tls_cert_file:
        try:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"MIGSERVE_NATS_TLS_CERT={settings.tls_cert_file!r} / MIGSERVE_NATS_TLS_KEY="
                f"{settings.tls_key_file!r} are not a readable certificate and key: {exc}"
            ) from exc
    return context
