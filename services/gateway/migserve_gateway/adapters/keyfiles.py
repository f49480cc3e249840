"""Reading the API key files named by MIGSERVE_API_KEYS_FILE and MIGSERVE_ADMIN_KEY_FILE.

Errors name the variable and the path, never a key.
"""

from __future__ import annotations

from pathlib import Path

from migserve_gateway.core.auth import AuthKeys, parse_key_lines
from migserve_shared.errors import ConfigError


def read_keys(variable: str, path: str) -> list[str]:
    """The keys in the file at ``path``; ConfigError if unreadable or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}={path!r} cannot be read: {exc}") from exc
    keys = parse_key_lines(text)
    if not keys:
        raise ConfigError(f"{variable}={path!r} holds no key (one key a line, # for comments)")
    return keys


def load_auth_keys(
    api_keys_file: str | None, admin_key_file: str | None, *, disabled: bool = False
) -> AuthKeys:
    """The keys the gateway accepts; both files are required unless auth is disabled."""
    if disabled:
        return AuthKeys.off()
    if not api_keys_file or not admin_key_file:
        missing = "MIGSERVE_API_KEYS_FILE" if not api_keys_file else "MIGSERVE_ADMIN_KEY_FILE"
        raise ConfigError(
            f"{missing} is not set: the gateway needs its key files, or "
            "MIGSERVE_AUTH_DISABLED=true for local development"
        )
    admin = read_keys("MIGSERVE_ADMIN_KEY_FILE", admin_key_file)
    if len(admin) != 1:
        raise ConfigError(
            f"MIGSERVE_ADMIN_KEY_FILE={admin_key_file!r} must hold exactly one key, "
            f"it holds {len(admin)}"
        )
    return AuthKeys.from_keys(read_keys("MIGSERVE_API_KEYS_FILE", api_keys_file), admin[0])
