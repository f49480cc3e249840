"""Gateway auth: the pure key checks (tables), the key files, and the HTTP answers."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from migserve_gateway.adapters.keyfiles import load_auth_keys
from migserve_gateway.core.auth import (
    ANONYMOUS,
    AuthKeys,
    authorize,
    bearer_token,
    key_id,
    parse_key_lines,
)
from migserve_gateway.core.errors import ApiError
from migserve_gateway.settings import settings_from_env
from migserve_shared.errors import ConfigError
from test_gateway_http import CHAT, SETTINGS, chat, gateway


def start_keys(env: dict[str, str]) -> AuthKeys:
    """What run_gateway does at start."""
    s = settings_from_env(env)
    return load_auth_keys(s.api_keys_file, s.admin_key_file, disabled=s.auth_disabled)


USER, OTHER, ADMIN = "sk-user-1", "sk-user-2", "sk-admin"
KEYS = AuthKeys.from_keys([USER, OTHER], ADMIN)


@pytest.mark.parametrize(
    ("header", "admin", "outcome"),
    [
        (f"Bearer {USER}", False, key_id(USER)),
        (f"bearer  {OTHER} ", False, key_id(OTHER)),
        (f"Bearer {ADMIN}", False, "admin"),
        (f"Bearer {ADMIN}", True, "admin"),
        (f"Bearer {USER}", True, 403),
        (None, False, 401),
        ("", True, 401),
        (USER, False, 401),
        (f"Basic {USER}", False, 401),
        ("Bearer ", False, 401),
        ("Bearer sk-wrong", False, 401),
        ("Bearer sk-wrong", True, 401),
        (f"Bearer {USER}x", False, 401),
    ],
)
def test_authorize_table(header: str | None, admin: bool, outcome: str | int) -> None:
    if isinstance(outcome, str):
        assert authorize(KEYS, header, admin=admin) == outcome
        return
    with pytest.raises(ApiError) as info:
        authorize(KEYS, header, admin=admin)
    assert info.value.status == outcome
    if outcome == 401:
        assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_disabled_auth_lets_everyone_in_and_nothing_leaks() -> None:
    assert authorize(AuthKeys.off(), None, admin=True) == ANONYMOUS
    text = repr(KEYS) + key_id(USER)
    for key in (USER, OTHER, ADMIN):
        assert key not in text
    assert bearer_token("Bearer  abc ") == "abc"


def test_key_files_comments_blank_lines(tmp_path: Path) -> None:
    assert parse_key_lines("# keys\n\n  k1  \nk2\n   # indented comment\n") == ["k1", "k2"]
    users, admin = tmp_path / "keys", tmp_path / "admin"
    users.write_text(f"# team a\n{USER}\n\n{OTHER}\n")
    admin.write_text(f"{ADMIN}\n")
    env = {"MIGSERVE_API_KEYS_FILE": str(users), "MIGSERVE_ADMIN_KEY_FILE": str(admin)}
    keys = start_keys(env)
    assert authorize(keys, f"Bearer {OTHER}", admin=False) == key_id(OTHER)
    assert authorize(keys, f"Bearer {ADMIN}", admin=True) == "admin"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "MIGSERVE_API_KEYS_FILE is not set"),
        ({"MIGSERVE_API_KEYS_FILE": "{users}"}, "MIGSERVE_ADMIN_KEY_FILE is not set"),
        (
            {"MIGSERVE_API_KEYS_FILE": "{empty}", "MIGSERVE_ADMIN_KEY_FILE": "{admin}"},
            "holds no key",
        ),
        (
            {"MIGSERVE_API_KEYS_FILE": "{users}", "MIGSERVE_ADMIN_KEY_FILE": "{missing}"},
            "MIGSERVE_ADMIN_KEY_FILE=",
        ),
        (
            {"MIGSERVE_API_KEYS_FILE": "{users}", "MIGSERVE_ADMIN_KEY_FILE": "{users}"},
            "exactly one key",
        ),
        ({"MIGSERVE_AUTH_DISABLED": "maybe"}, "MIGSERVE_AUTH_DISABLED='maybe'"),
    ],
)
def test_bad_auth_settings_name_the_variable(
    tmp_path: Path, env: dict[str, str], words: str
) -> None:
    files = {"users": f"{USER}\n{OTHER}\n", "admin": ADMIN, "empty": "# nothing\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    paths = {name: str(tmp_path / name) for name in (*files, "missing")}
    env = {k: v.format(**paths) for k, v in env.items()}
    with pytest.raises(ConfigError, match=words) as info:
        start_keys(env)
    for key in (USER, OTHER, ADMIN):
        assert key not in str(info.value)
    if env.get("MIGSERVE_API_KEYS_FILE") == paths["users"]:
        load_auth_keys(paths["users"], paths["admin"])  # the good pair loads


def test_auth_is_only_off_when_asked() -> None:
    assert start_keys({"MIGSERVE_AUTH_DISABLED": "true"}).disabled
    with pytest.raises(ConfigError):
        start_keys({"MIGSERVE_AUTH_DISABLED": "false"})
    with pytest.raises(ConfigError):
        start_keys({})


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


SPEC = {"model_id": "org/new", "memory_mb": 1000, "tpot_slo_ms": 40}
HTTP_TABLE: list[tuple[str, str, dict[str, str], int]] = [
    ("POST", CHAT, {}, 401),
    ("POST", CHAT, bearer("sk-nope"), 401),
    ("POST", CHAT, bearer(USER), 200),
    ("POST", CHAT, bearer(ADMIN), 200),
    ("GET", "/v1/models", {}, 401),
    ("GET", "/v1/models", bearer(OTHER), 200),
    ("GET", "/v1/admin/models", {}, 401),
    ("GET", "/v1/admin/models", bearer(USER), 403),
    ("POST", "/v1/admin/models", bearer(USER), 403),
    ("DELETE", "/v1/admin/models/org/model-1", bearer(USER), 403),
    ("GET", "/v1/admin/models", bearer(ADMIN), 200),
    ("POST", "/v1/admin/models", bearer(ADMIN), 201),
    ("POST", "/v1/completions", {}, 401),
    ("POST", "/v1/completions", bearer(USER), 200),
    ("POST", "/generate", {}, 401),
    ("POST", "/generate", bearer(OTHER), 200),
    ("GET", "/info", bearer("sk-nope"), 401),
    ("GET", "/health", {}, 200),
    ("GET", "/metrics", {}, 200),
]


@pytest.mark.parametrize(("method", "path", "headers", "status"), HTTP_TABLE)
async def test_http_auth_table(
    method: str, path: str, headers: dict[str, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"/v1/admin/models": SPEC, "/generate": {"inputs": "hi"}}.get(path, chat())
    if path == "/v1/completions":
        body = {"model": chat()["model"], "prompt": "hi"}
    async with gateway(replace(SETTINGS, auth_disabled=False), auth=KEYS) as gw:
        r = await gw.client.request(
            method, path, headers=headers, json=body if method == "POST" else None
        )
        assert r.status_code == status, r.text
        if status in (401, 403) and path in ("/generate", "/info"):
            assert r.json()["error_type"] == "validation"  # TGI's shape on TGI routes
        elif status in (401, 403):
            error = r.json()["error"]
            assert error["code"] == (
                "invalid_api_key" if status == 401 else "insufficient_permissions"
            )
            assert error["type"] in ("invalid_request_error", "permission_error")
            assert "x-request-id" in r.headers
            reason = "unauthorized" if status == 401 else "forbidden"
            assert await gw.metric("migserve_gateway_bad_requests_total", reason=reason) == 1
            assert gw.jobs.jobs == []
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"
        # the gateway keeps serving, and keys are never logged
        assert (await gw.client.get("/health")).status_code == 200
    for key in (USER, OTHER, ADMIN):
        assert key not in caplog.text


async def test_no_keys_loaded_means_nothing_gets_in() -> None:
    async with gateway(replace(SETTINGS, auth_disabled=False)) as gw:
        r = await gw.client.post(CHAT, json=chat(), headers=bearer(USER))
        assert r.status_code == 401
