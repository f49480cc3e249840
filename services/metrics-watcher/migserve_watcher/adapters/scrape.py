"""GET a /metrics page over HTTP, with errors translated to ``ScrapeError``."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

_MAX_BYTES = 4 << 20


class ScrapeError(Exception):
    """A /metrics page could not be read; the message names the URL and the cause."""


def metrics_url(base: str) -> str:
    """``base`` if it already names a /metrics path, else ``base`` + ``/metrics``."""
    path = urlsplit(base).path.rstrip("/")
    if path.endswith("/metrics"):
        return base
    return base.rstrip("/") + "/metrics"


async def scrape(client: httpx.AsyncClient, url: str, *, timeout_s: float) -> str:
    """The body of ``url``; ScrapeError on a network error, a non-200 answer or a huge body."""
    try:
        resp = await client.get(url, timeout=timeout_s, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise ScrapeError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise ScrapeError(f"GET {url} answered {resp.status_code}")
    if len(resp.content) > _MAX_BYTES:
        raise ScrapeError(f"GET {url} returned {len(resp.content)} bytes (limit {_MAX_BYTES})")
    return resp.text
