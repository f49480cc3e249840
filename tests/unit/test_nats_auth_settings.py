"""NATS credentials from the environment: validated, never echoed, never logged."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from migserve_shared.connection import connect_options
from migserve_shared.env import (
    Env,
    NatsSettings,
    bridge_nats_environment,
    nats_settings,
    redact_url,
    split_url_credentials,
)
from migserve_shared.errors import ConfigError
from migserve_shared.logs import JsonFormatter, TextFormatter, redact_secrets

SECRET = "Zq7sEcReT9xyz"


def settings(**env: str) -> NatsSettings:
    return nats_settings(Env(env), "test")


def test_user_and_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    s = settings(MIGSERVE_NATS_USER="gateway", MIGSERVE_NATS_PASSWORD_FILE=str(pw))
    assert (s.user, s.password, s.password_file) == ("gateway", None, str(pw))
    opts = connect_options(s)
    assert opts["user"] == "gateway" and opts["password"] == SECRET
    assert opts["inbox_prefix"] == "_INBOX.gateway"
    assert SECRET not in repr(s)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MIGSERVE_NATS_USER": "gw"}, ["MIGSERVE_NATS_USER", "MIGSERVE_NATS_PASSWORD_FILE"]),
        ({"MIGSERVE_NATS_PASSWORD_FILE": "/x"}, ["MIGSERVE_NATS_PASSWORD_FILE"]),
        ({"MIGSERVE_NATS_PASSWORD": SECRET}, ["MIGSERVE_NATS_PASSWORD", "MIGSERVE_NATS_USER"]),
        (
            {
                "MIGSERVE_NATS_USER": "gw",
                "MIGSERVE_NATS_PASSWORD": SECRET,
                "MIGSERVE_NATS_PASSWORD_FILE": "/x",
            },
            ["MIGSERVE_NATS_PASSWORD", "MIGSERVE_NATS_PASSWORD_FILE"],
        ),
        (
            {
                "MIGSERVE_NATS_USER": "gw",
                "MIGSERVE_NATS_PASSWORD": SECRET,
                "MIGSERVE_NATS_CREDS": "/c",
            },
            ["MIGSERVE_NATS_CREDS", "MIGSERVE_NATS_USER"],
        ),
        (
            {"MIGSERVE_NATS_URL": f"nats://gw:{SECRET}@h:4222", "MIGSERVE_NATS_USER": "gw"},
            ["MIGSERVE_NATS_URL", "MIGSERVE_NATS_USER"],
        ),
        ({"MIGSERVE_NATS_URL": f"http://gw:{SECRET}@h:4222"}, ["MIGSERVE_NATS_URL"]),
        ({"MIGSERVE_NATS_INBOX_PREFIX": "_INBOX.>"}, ["MIGSERVE_NATS_INBOX_PREFIX"]),
        ({"MIGSERVE_NATS_TLS_CERT": "/c.pem"}, ["MIGSERVE_NATS_TLS_CERT", "MIGSERVE_NATS_TLS_KEY"]),
    ],
)
def test_bad_combinations_name_the_variables_and_never_the_secret(
    env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**env)
    for name in names:
        assert name in str(err.value)
    assert SECRET not in str(err.value)


def test_password_file_problems_name_the_variable_not_the_content(tmp_path: Path) -> None:
    missing = NatsSettings(user="gw", password_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"MIGSERVE_NATS_PASSWORD_FILE=.*nope.*cannot be read"):
        connect_options(missing)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"MIGSERVE_NATS_PASSWORD_FILE=.*is empty"):
        connect_options(NatsSettings(user="gw", password_file=str(empty)))
    with pytest.raises(ConfigError, match="MIGSERVE_NATS_CREDS"):
        connect_options(NatsSettings(creds_file=str(tmp_path / "none.creds")))
    with pytest.raises(ConfigError, match="MIGSERVE_NATS_TLS_CA"):
        connect_options(NatsSettings(tls_ca_file=str(tmp_path / "none.pem")))


def test_credentials_in_the_url_move_out_of_it() -> None:
    s = settings(MIGSERVE_NATS_URL=f"nats://gw:{SECRET}@nats.example:4222")
    assert (s.url, s.user, s.password) == ("nats://nats.example:4222", "gw", SECRET)
    assert SECRET not in repr(s) and "password='***'" in repr(s)
    t = settings(MIGSERVE_NATS_URL=f"tls://{SECRET}@nats.example")
    assert (t.url, t.user, t.token) == ("tls://nats.example", None, SECRET)
    assert connect_options(t)["token"] == SECRET and SECRET not in repr(t)
    escaped = split_url_credentials("nats://u%40x:p%2Fq@h:1")
    assert escaped == ("nats://h:1", "u@x", "p/q")


def test_redaction() -> None:
    assert redact_url(f"nats://gw:{SECRET}@h:4222") == "nats://gw:***@h:4222"
    assert redact_url(f"nats://{SECRET}@h") == "nats://***@h"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    line = f"at nats://gw:{SECRET}@h:4222, tls://{SECRET}@h2 and http://a:{SECRET}@c/x"
    assert SECRET not in redact_secrets(line)
    assert "nats://gw:***@h:4222" in redact_secrets(line)


@pytest.mark.parametrize("formatter", [JsonFormatter("test"), TextFormatter()])
def test_log_lines_never_carry_a_url_password(formatter: logging.Formatter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("test_nats_auth_settings.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        url = f"nats://gw:{SECRET}@h:4222"
        log.warning("cannot reach %s", url, extra={"url": url})
        try:
            raise OSError(f"connect to {url} failed")
        except OSError:
            log.exception("failed")
        log.warning("settings %r", NatsSettings(url=url, user="gw", password=SECRET))
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "gw:***@h:4222" in out
    assert SECRET not in out


def test_bridges_started_by_an_agent_get_the_bridge_user() -> None:
    agent_env = {
        "MIGSERVE_NATS_USER": "agent-node-1",
        "MIGSERVE_NATS_PASSWORD_FILE": "/c/agent-node-1.password",
        "MIGSERVE_NATS_INBOX_PREFIX": "_INBOX.agent-node-1",
        "MIGSERVE_BRIDGE_NATS_USER": "bridge",
        "MIGSERVE_BRIDGE_NATS_PASSWORD_FILE": "/c/bridge.password",
        "PATH": "/bin",
    }
    env = bridge_nats_environment(agent_env)
    assert env["MIGSERVE_NATS_USER"] == "bridge"
    assert env["MIGSERVE_NATS_PASSWORD_FILE"] == "/c/bridge.password"
    assert "MIGSERVE_NATS_INBOX_PREFIX" not in env and env["PATH"] == "/bin"
    s = nats_settings(Env(env), "bridge")
    assert (s.user, s.password_file) == ("bridge", "/c/bridge.password")
    plain = {"MIGSERVE_NATS_URL": "nats://h:1", "PATH": "/bin"}
    assert bridge_nats_environment(plain) == plain  # no bridge credentials: unchanged


def test_no_credentials_is_still_fine() -> None:
    s = settings()
    assert (s.user, s.password, s.token, s.creds_file) == (None, None, None, None)
    assert connect_options(s) == {"inbox_prefix": "_INBOX"}
