"""A small HTTP/1.1 client for the bridge's one engine: keep-alive, one write per request.

The bridge talks to exactly one engine on the same host or pod, over plain
HTTP/1.1, one streamed request per job. httpx does this too, but its layers
(httpx, httpcore, h11, anyio) cost about 1 ms per request on the way to the
first token on a 2-core machine (bench/gateway_overhead.py), which is half of
the gateway path's budget. This client keeps idle connections for reuse,
sends the request line, headers and body in one write (one syscall, one
wake-up of the engine), and reads the answer with asyncio's buffered reader.

What it does: Content-Length, chunked and read-to-close bodies; keep-alive
(an idle connection the engine closed is noticed and replaced, and a request
whose reused connection turns out dead before any answer byte is sent once
more on a fresh one); http and https. What it does not: redirects,
compression (it asks for identity), proxies, HTTP/2, 100-continue.

Errors are its own (``HttpError`` and subclasses); the engine adapter
translates them. A read that waits longer than ``read_timeout_s`` raises
``ReadTimedOut``; there is no total timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

_MAX_HEAD: Final = 64 * 1024
_MAX_CHUNK_LINE: Final = 1024
_MAX_CHUNK: Final = 16 * 1024 * 1024
_READ_SIZE: Final = 64 * 1024


class HttpError(Exception):
    """Any failure talking to the server."""


class ConnectFailed(HttpError):
    """No connection could be made (refused, unreachable, timed out)."""


class ReadTimedOut(HttpError):
    """The server sent nothing for ``read_timeout_s``."""


class ConnectionBroke(HttpError):
    """The connection closed or the server broke the protocol mid-answer."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class Response:
    """An answer's status and headers (names in lower case); ``chunks()`` reads its body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: AsyncIterator[bytes] = field(repr=False)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (each chunk of a chunked body as one piece)."""
        return self.body


class Http1Pool:
    """Keep-alive connections to one server (``base_url``: scheme, host and port)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_idle: int,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if url.scheme == "https" else None
        )
        self._host_header = url.netloc.rsplit("@", 1)[-1].encode("ascii")
        self._max_idle = max_idle
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._idle: list[_Conn] = []
        self._closed = False

    async def __aenter__(self) -> Http1Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        read_timeout_s: float | None = None,
    ) -> AsyncIterator[Response]:
        """Send one request and yield its answer; leaving the block early closes the connection.

        The connection goes back to the pool only when the body was read to
        its end and both sides keep it alive.
        """
        timeout = self._read_timeout_s if read_timeout_s is None else read_timeout_s
        head = self._head(method, path, body, headers)
        conn, reused = await self._acquire()
        try:
            try:
                answer = await self._exchange(conn, head, body, timeout)
            except _DeadConnectionError:
                if not reused:
                    raise
                conn.close()  # the server closed it while idle: once more on a fresh one
                conn = await self._connect()
                answer = await self._exchange(conn, head, body, timeout)
            status, reason, response_headers, keep_alive = answer
            done = asyncio.Event()
            body_reader = _BodyReader(
                conn, response_headers, method=method, status=status, timeout=timeout, done=done
            )
        except BaseException:
            conn.close()
            raise
        pieces = body_reader.pieces()
        try:
            yield Response(status, reason, response_headers, pieces)
        finally:
            with contextlib.suppress(Exception):
                await pieces.aclose()
            if done.is_set() and keep_alive and not self._closed:
                self._release(conn)
            else:
                conn.close()

    # internals --------------------------------------------------------------------------
    def _head(
        self, method: str, path: str, body: bytes, headers: Iterable[tuple[str, str]]
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"host: {self._host_header.decode()}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("accept-encoding: identity")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _acquire(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn, True
            conn.close()
        return await self._connect(), False

    def _release(self, conn: _Conn) -> None:
        if conn.usable and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl, limit=_MAX_HEAD
                )
        except TimeoutError as exc:
            raise ConnectFailed(
                f"connecting to {self._host}:{self._port} timed out "
                f"after {self._connect_timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes, limit_s: float) -> _Head:
        try:
            conn.writer.write(head + body if body else head)
            async with asyncio.timeout(limit_s):
                raw = await conn.reader.readuntil(b"\r\n\r\n")
        except TimeoutError as exc:
            raise ReadTimedOut(f"no answer within {limit_s:g} s") from exc
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _DeadConnectionError("the server closed the connection unanswered") from exc
            raise ConnectionBroke("the connection closed in the middle of the headers") from exc
        except asyncio.LimitOverrunError as exc:
            raise ConnectionBroke(f"response headers longer than {_MAX_HEAD} bytes") from exc
        except (ConnectionError, OSError) as exc:
            raise _DeadConnectionError(f"the connection broke unanswered: {exc!r}") from exc
        return _parse_head(raw)


#: status, reason, headers (lower-case names), keep-alive
_Head = tuple[int, str, dict[str, str], bool]


class _DeadConnectionError(ConnectionBroke):
    """The connection died before any answer byte (a reused one is retried once)."""


def _parse_head(raw: bytes) -> _Head:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionBroke(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ConnectionBroke(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    keep_alive = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers, keep_alive


class _BodyReader:
    """Reads one answer's body by its framing; sets ``done`` once it was read to its end."""

    def __init__(
        self,
        conn: _Conn,
        headers: dict[str, str],
        *,
        method: str,
        status: int,
        timeout: float,
        done: asyncio.Event,
    ) -> None:
        self._reader = conn.reader
        self._timeout = timeout
        self._done = done
        self._gen: AsyncGenerator[bytes, None]
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self._gen = self._empty()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._gen = self._chunked()
        elif (length := headers.get("content-length")) is not None:
            if not length.isdigit():
                raise ConnectionBroke(f"bad content-length {length!r}")
            self._gen = self._sized(int(length))
        else:
            self._gen = self._to_close()

    def pieces(self) -> AsyncGenerator[bytes, None]:
        return self._gen

    async def _read(self, n: int) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._reader.read(n)
        except TimeoutError as exc:
            raise ReadTimedOut(f"the server sent nothing for {self._timeout:g} s") from exc
        except (ConnectionError, OSError) as exc:
            raise ConnectionBroke(f"the connection broke: {exc!r}") from exc

    async def _empty(self) -> AsyncGenerator[bytes, None]:
        self._done.set()
        return
        yield b""  # pragma: no cover - makes this an async generator

    async def _chunked(self) -> AsyncGenerator[bytes, None]:
        decoder = ChunkedDecoder()
        while not decoder.done:
            data = await self._read(_READ_SIZE)
            if not data:
                raise ConnectionBroke("the connection closed in the middle of the body")
            payload = decoder.feed(data)
            if payload:
                yield payload
        if not decoder.leftover:
            self._done.set()

    async def _sized(self, remaining: int) -> AsyncGenerator[bytes, None]:
        while remaining > 0:
            data = await self._read(min(remaining, _READ_SIZE))
            if not data:
                raise ConnectionBroke(f"the connection closed {remaining} bytes before the end")
            remaining -= len(data)
            yield data
        self._done.set()

    async def _to_close(self) -> AsyncGenerator[bytes, None]:
        while data := await self._read(_READ_SIZE):
            yield data


class ChunkedDecoder:
    """Decodes a chunked body incrementally: ``feed`` raw bytes, get the payload they complete.

    Every chunk that a read completes comes out in one piece, so a reader that
    fell behind gets the payload of several chunks (SSE events) at once. A
    chunk is passed on only when it is complete.
    """

    __slots__ = ("_buf", "_size", "_trailers", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._size = -1  # -1: a size line comes next
        self._trailers = False
        #: the last chunk and the trailers were read
        self.done = False

    @property
    def leftover(self) -> bool:
        """Bytes came after the end of the body (the connection cannot be reused)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        while not self.done:
            if self._size < 0 or self._trailers:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > _MAX_CHUNK_LINE:
                        raise ConnectionBroke("a chunk size or trailer line is too long")
                    break
                line, pos = buf[pos:end], end + 2
                if self._trailers:
                    self.done = not line
                    continue
                self._size = _chunk_size(line)
                self._trailers = self._size == 0
                continue
            end = pos + self._size
            if len(buf) < end + 2:
                break
            if buf[end : end + 2] != b"\r\n":
                raise ConnectionBroke("a chunk does not end with CRLF")
            out.append(buf[pos:end])
            pos, self._size = end + 2, -1
        self._buf = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    try:
        size = int(text, 16)
    except ValueError:
        raise ConnectionBroke(f"bad chunk size line {line[:40]!r}") from None
    if size < 0 or size > _MAX_CHUNK:
        raise ConnectionBroke(f"chunk size {size} out of bounds")
    return size
