"""``kv_values`` does not take nats-py's spurious NoKeysError for an empty bucket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from migserve_shared.bus import kv_values
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue


@dataclass
class _Entry:
    value: bytes
    revision: int


@dataclass
class _FlakyKv:
    """keys() raises NoKeysError ``misses`` times, then lists ``data``."""

    data: dict[str, bytes]
    misses: int
    calls: int = 0
    deleted: set[str] = field(default_factory=set)

    async def keys(self) -> list[str]:
        self.calls += 1
        if self.calls <= self.misses or not self.data:
            raise NoKeysError
        return list(self.data)

    async def get(self, key: str) -> _Entry:
        if key in self.deleted:
            raise KeyNotFoundError
        return _Entry(self.data[key], 7)


def _kv(fake: Any) -> KeyValue:
    return cast(KeyValue, fake)


async def test_a_spurious_no_keys_is_asked_again() -> None:
    fake = _FlakyKv({"a": b"1", "b": b"2"}, misses=2)
    assert await kv_values(_kv(fake)) == [("a", b"1", 7), ("b", b"2", 7)]
    assert fake.calls == 3


async def test_an_empty_bucket_is_empty_after_three_answers() -> None:
    fake = _FlakyKv({}, misses=0)
    assert await kv_values(_kv(fake)) == []
    assert fake.calls == 3


async def test_a_key_deleted_meanwhile_is_skipped() -> None:
    fake = _FlakyKv({"a": b"1", "b": b"2"}, misses=0, deleted={"a"})
    assert await kv_values(_kv(fake)) == [("b", b"2", 7)]
