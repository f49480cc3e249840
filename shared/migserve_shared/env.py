"""Read settings from an environment mapping, with errors that name the variable.

Each service builds its one settings object with a function that takes the
mapping as a parameter (``settings_from_env(os.environ)``), so tests pass a
plain dict. Every error names the variable and the value it had.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from migserve_shared.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Env:
    """Typed access to an environment mapping."""

    mapping: Mapping[str, str]

    def text(self, name: str, default: str | None = None) -> str:
        value = self.mapping.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            return default
        return value

    def optional(self, name: str) -> str | None:
        value = self.mapping.get(name)
        return value if value else None

    def integer(
        self, name: str, default: int, *, min: int | None = None, max: int | None = None
    ) -> int:
        raw = self.mapping.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not an integer") from exc
        return _bounded(name, raw, value, min, max)

    def number(
        self, name: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float:
        raw = self.mapping.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not a number") from exc
        if math.isnan(value) or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}={raw!r} is not a finite number")
        return _bounded(name, raw, value, min, max)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.mapping.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
        return value


def _bounded(name: str, raw: str, value: T, lo: T | None, hi: T | None) -> T:
    if lo is not None and value < lo:  # type: ignore[operator]
        raise ConfigError(f"{name}={raw!r} is below the minimum {lo}")
    if hi is not None and value > hi:  # type: ignore[operator]
        raise ConfigError(f"{name}={raw!r} is above the maximum {hi}")
    return value


NATS_URL_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
_SUBJECT_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How a service reaches NATS (MIGSERVE_NATS_*).

    ``url`` never carries credentials when built by ``nats_settings`` (they are
    moved to ``user``/``password``/``token``), so it is safe to log; ``repr``
    hides the secrets anyway. A password file is read at connect time
    (``bus.connect``), not here.
    """

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    name: str = "migserve"
    #: copies of each JetStream stream and bucket (3 on a 3-server NATS cluster)
    js_replicas: int = 1
    #: file holding the password of ``user`` (MIGSERVE_NATS_PASSWORD_FILE)
    password_file: str | None = None
    #: a token from the URL (nats://TOKEN@host)
    token: str | None = field(default=None, repr=False)
    #: subject prefix of this client's reply inboxes; None: ``_INBOX.<user>``
    #: (permissions.default_inbox_prefix) or ``_INBOX`` without a user
    inbox_prefix: str | None = None
    #: TLS: CA bundle to verify the server, and an optional client certificate
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __repr__(self) -> str:
        secret = "***" if (self.password or self.token) else None
        return (
            f"NatsSettings(url={redact_url(self.url)!r}, user={self.user!r}, "
            f"password={secret!r}, password_file={self.password_file!r}, "
            f"creds_file={self.creds_file!r}, name={self.name!r}, "
            f"js_replicas={self.js_replicas}, inbox_prefix={self.inbox_prefix!r}, "
            f"tls_ca_file={self.tls_ca_file!r}, tls_cert_file={self.tls_cert_file!r})"
        )


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without credentials, user or token, password)`` of a NATS URL.

    ``nats://u:p@host:4222`` gives ``("nats://host:4222", "u", "p")``;
    ``nats://tok@host`` gives ``("nats://host", "tok", None)`` (a token).
    Percent-escapes in the credentials are decoded.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    name, sep, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostport))
    return clean, unquote(name), unquote(password) if sep else None


def redact_url(url: str) -> str:
    """The URL with any password or token replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    name, sep, _ = userinfo.partition(":")
    shown = f"{name}:***" if sep else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


def nats_settings(env: Env, name: str) -> NatsSettings:
    """NATS settings from MIGSERVE_NATS_* (credentials validated, never echoed).

    Credentials: MIGSERVE_NATS_USER with MIGSERVE_NATS_PASSWORD_FILE (or
    MIGSERVE_NATS_PASSWORD), or a creds file MIGSERVE_NATS_CREDS, or inside
    MIGSERVE_NATS_URL (nats://user:password@host:port); one way at a time.
    """
    raw = env.text("MIGSERVE_NATS_URL", "nats://127.0.0.1:4222")
    if not raw.startswith(NATS_URL_SCHEMES):
        raise ConfigError(
            f"MIGSERVE_NATS_URL={redact_url(raw)!r} is not a nats://, tls://, ws:// or wss:// URL"
        )
    url, url_user, url_password = split_url_credentials(raw)
    user = env.optional("MIGSERVE_NATS_USER")
    password = env.optional("MIGSERVE_NATS_PASSWORD")
    password_file = env.optional("MIGSERVE_NATS_PASSWORD_FILE")
    creds = env.optional("MIGSERVE_NATS_CREDS")
    token: str | None = None
    if url_user is not None:
        if user or password or password_file or creds:
            raise ConfigError(
                "MIGSERVE_NATS_URL carries credentials and MIGSERVE_NATS_USER, _PASSWORD, "
                "_PASSWORD_FILE or _CREDS is set too: give them one way"
            )
        if url_password is None:
            token = url_user
        else:
            user, password = url_user, url_password
    _check_credentials(user=user, password=password, password_file=password_file, creds=creds)
    inbox = env.optional("MIGSERVE_NATS_INBOX_PREFIX")
    if inbox is not None and not _SUBJECT_PREFIX.fullmatch(inbox):
        raise ConfigError(
            f"MIGSERVE_NATS_INBOX_PREFIX={inbox!r} is not a subject prefix "
            "(dot-separated tokens of letters, digits, '_' and '-')"
        )
    cert = env.optional("MIGSERVE_NATS_TLS_CERT")
    key = env.optional("MIGSERVE_NATS_TLS_KEY")
    if bool(cert) != bool(key):
        raise ConfigError("MIGSERVE_NATS_TLS_CERT and MIGSERVE_NATS_TLS_KEY go together: set both")
    return NatsSettings(
        url=url,
        user=user,
        password=password,
        password_file=password_file,
        creds_file=creds,
        token=token,
        name=name,
        js_replicas=env.integer("MIGSERVE_JS_REPLICAS", 1, min=1, max=5),
        inbox_prefix=inbox,
        tls_ca_file=env.optional("MIGSERVE_NATS_TLS_CA"),
        tls_cert_file=cert,
        tls_key_file=key,
    )


def _check_credentials(
    *, user: str | None, password: str | None, password_file: str | None, creds: str | None
) -> None:
    if password and password_file:
        raise ConfigError(
            "MIGSERVE_NATS_PASSWORD and MIGSERVE_NATS_PASSWORD_FILE are both set: use one "
            "(the file is safer)"
        )
    if (password or password_file) and not user:
        which = "MIGSERVE_NATS_PASSWORD_FILE" if password_file else "MIGSERVE_NATS_PASSWORD"
        raise ConfigError(f"{which} is set but MIGSERVE_NATS_USER is not")
    if user and not (password or password_file):
        raise ConfigError(
            f"MIGSERVE_NATS_USER={user!r} is set but neither MIGSERVE_NATS_PASSWORD_FILE "
            "nor MIGSERVE_NATS_PASSWORD is"
        )
    if creds and user:
        raise ConfigError(
            "MIGSERVE_NATS_CREDS and MIGSERVE_NATS_USER are both set: use a creds file "
            "or a user and password"
        )


#: variables an agent passes to the bridges it starts as theirs (process runtime)
BRIDGE_NATS_VARS: dict[str, str] = {
    "MIGSERVE_BRIDGE_NATS_USER": "MIGSERVE_NATS_USER",
    "MIGSERVE_BRIDGE_NATS_PASSWORD_FILE": "MIGSERVE_NATS_PASSWORD_FILE",
    "MIGSERVE_BRIDGE_NATS_CREDS": "MIGSERVE_NATS_CREDS",
}
_OWN_CREDENTIALS = (
    "MIGSERVE_NATS_USER",
    "MIGSERVE_NATS_PASSWORD",
    "MIGSERVE_NATS_PASSWORD_FILE",
    "MIGSERVE_NATS_CREDS",
    "MIGSERVE_NATS_INBOX_PREFIX",
)


def bridge_nats_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a bridge an agent starts: the agent's own, except that
    MIGSERVE_BRIDGE_NATS_* (when set) replace the agent's NATS credentials, so
    a bridge connects as the bridge user and never with the agent's rights."""
    if not any(env.get(var) for var in BRIDGE_NATS_VARS):
        return dict(env)
    out = {k: v for k, v in env.items() if k not in _OWN_CREDENTIALS}
    for var, target in BRIDGE_NATS_VARS.items():
        if env.get(var):
            out[target] = env[var]
    return out
