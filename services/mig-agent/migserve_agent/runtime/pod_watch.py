"""This node's engine Pods, kept current in memory by a list-then-watch loop in a thread.

The ``Runtime`` protocol's ``liveness``, ``adopt`` and ``known`` are
synchronous, so they cannot ask the API server; they read this cache. A
background thread lists the node's engine Pods, then watches them from the
list's resource version (resuming after each watch ends, listing again when
the API server says the version expired, HTTP 410), like a client-go informer.
Reads made elsewhere (``put``) update the same cache; a stale read never
replaces a newer watched state (``pod_state.newer``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import suppress
from typing import Any, Protocol

import urllib3

from migserve_agent.runtime import pod_state, pods
from migserve_agent.runtime.pod_state import PodView
from migserve_agent.runtime.pods import KubernetesApiError

log = logging.getLogger(__name__)


class _WatchExpiredError(Exception):
    """HTTP 410: the watch's resource version is too old; list again."""


class PodSource(Protocol):
    """The two API calls the watch makes (``kubernetes.PodApi``)."""

    def list(self, *, labels: str, fields: str) -> tuple[list[dict[str, Any]], str]: ...

    def watch(
        self, *, labels: str, fields: str, resource_version: str, timeout_s: int
    ) -> urllib3.BaseHTTPResponse: ...


def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The newline-delimited JSON events of a watch response, as they arrive."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from (line for line in lines if line.strip())


class PodWatch:
    """Engine Pods of one node, by Pod name."""

    def __init__(
        self, api: PodSource, *, node: str, watch_timeout_s: int = 300, backoff_s: float = 2.0
    ) -> None:
        self._api = api
        self._node = node
        self._labels, self._fields = pods.node_selector(node)
        self._watch_timeout_s = watch_timeout_s
        self._backoff_s = backoff_s
        self._lock = threading.Lock()
        self._pods: dict[str, PodView] = {}
        self._stop = threading.Event()
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._thread: threading.Thread | None = None
        self._resource_version = ""

    # The cache (any thread) --------------------------------------------------------------
    def get(self, name: str) -> PodView | None:
        with self._lock:
            return self._pods.get(name)

    def all(self) -> list[PodView]:
        with self._lock:
            return list(self._pods.values())

    def put(self, pod: Mapping[str, Any]) -> PodView | None:
        """Record a Pod object read or received; its current view if it is ours."""
        v = pod_state.view(pod)
        if v is None or v.node != self._node:
            return None
        with self._lock:
            if pod_state.newer(v, self._pods.get(v.name)):
                self._pods[v.name] = v
            return self._pods[v.name]

    def forget(self, name: str) -> None:
        with self._lock:
            self._pods.pop(name, None)

    # The loop ----------------------------------------------------------------------------
    def relist(self) -> None:
        """Replace what is known with a fresh list (blocking)."""
        items, version = self._api.list(labels=self._labels, fields=self._fields)
        fresh = {}
        for item in items:
            v = pod_state.view(item)
            if v is not None and v.node == self._node:
                fresh[v.name] = v
        with self._lock:
            self._pods = fresh
            self._resource_version = version

    def start(self) -> None:
        """Watch in a daemon thread (call ``relist`` first)."""
        self._thread = threading.Thread(target=self._run, name="k8s-pod-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            with suppress(Exception):
                resp.shutdown()  # ends the thread's blocking read at once
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        listed = True
        while not self._stop.is_set():
            try:
                if not listed:
                    self.relist()
                self._watch_once()
                listed = True
            except _WatchExpiredError:
                listed = False
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("watching the engine pods of %s failed (%s); listing again in "
                            "%.0fs", self._node, exc, self._backoff_s)  # fmt: skip
                listed = False
                self._stop.wait(self._backoff_s)

    def _watch_once(self) -> None:
        """Follow one watch until the server ends it (or nothing arrives for a while)."""
        resp = self._api.watch(
            labels=self._labels,
            fields=self._fields,
            resource_version=self._resource_version,
            timeout_s=self._watch_timeout_s,
        )
        with self._lock:
            self._resp = resp
            if self._stop.is_set():  # stop() ran while the watch was opening
                resp.shutdown()
        try:
            for line in _lines(resp):
                self._apply(json.loads(line))
        except urllib3.exceptions.ReadTimeoutError:
            pass  # quiet for longer than the server's timeout: resume from the same version
        finally:
            with self._lock:
                self._resp = None
            resp.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _WatchExpiredError(obj.get("message", "gone"))
            raise KubernetesApiError(f"watch error: {obj.get('message', obj)}",
                                     status=int(obj.get("code") or 0))  # fmt: skip
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            self._resource_version = version
        if kind in ("ADDED", "MODIFIED"):
            self.put(obj)
        elif kind == "DELETED":
            name = (obj.get("metadata") or {}).get("name")
            if name:
                self.forget(str(name))
