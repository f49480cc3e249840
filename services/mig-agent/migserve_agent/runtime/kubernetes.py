"""The ``kubernetes`` runtime's connection to the API server.

The only module that imports the kubernetes client (``kubernetes.client.CoreV1Api``).
``PodApi`` makes the Pod calls (blocking: the runtime runs them in threads)
and turns the client's errors into ours with the cause chained: 404
``PodNotFoundError``, 409 ``PodConflictError``, 401/403
``KubernetesForbiddenError``, anything else or an unreachable server
``KubernetesApiError``. ``open_runtime`` builds the whole runtime: the
client configuration (``MIGSERVE_K8S_API_URL``, else the in-cluster service
account, else the kubeconfig), the namespace, the first list of this node's
engine Pods and the watch thread. What a Pod looks like is ``runtime/pods.py``;
what the runtime does with Pods is ``runtime/pod_runtime.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from migserve_shared.errors import ConfigError

from migserve_agent.runtime.pod_runtime import KubernetesRuntime
from migserve_agent.runtime.pod_settings import PodSettings
from migserve_agent.runtime.pod_watch import PodWatch
from migserve_agent.runtime.pods import (
    KubernetesApiError,
    KubernetesForbiddenError,
    PodConflictError,
    PodNotFoundError,
)

log = logging.getLogger(__name__)

#: where a Pod's service account token mount says which namespace it runs in
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_BY_STATUS: dict[int, type[KubernetesApiError]] = {
    404: PodNotFoundError,
    409: PodConflictError,
    401: KubernetesForbiddenError,
    403: KubernetesForbiddenError,
}


def translate(exc: ApiException, what: str) -> KubernetesApiError:
    """Our error for an ``ApiException``: the status, and the API server's message."""
    status = int(exc.status or 0)
    reason = str(exc.reason or "")
    with suppress(ValueError, TypeError, AttributeError):
        reason = json.loads(exc.body or "").get("message") or reason
    kind = _BY_STATUS.get(status, KubernetesApiError)
    return kind(f"{what}: HTTP {status} {reason}".rstrip(), status=status)


class PodApi:
    """Pod calls in one namespace. Blocking: call them in a worker thread."""

    def __init__(self, api: k8s.CoreV1Api, *, namespace: str, timeout_s: float = 10.0) -> None:
        self._api = api
        self.namespace = namespace
        self._timeout_s = timeout_s

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            resp = method(*args, _preload_content=False, _request_timeout=self._timeout_s,
                          **kwargs)  # fmt: skip
            return json.loads(resp.data)
        except ApiException as exc:
            raise translate(exc, what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesApiError(f"{what}: the API server did not answer: {exc}") from exc

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        created: dict[str, Any] = self._call(
            f"creating pod {self.namespace}/{name}",
            self._api.create_namespaced_pod,
            self.namespace,
            manifest,
        )
        return created

    def read(self, name: str) -> dict[str, Any] | None:
        """The Pod, or None if there is none."""
        try:
            pod: dict[str, Any] = self._call(
                f"reading pod {self.namespace}/{name}",
                self._api.read_namespaced_pod,
                name,
                self.namespace,
            )
        except PodNotFoundError:
            return None
        return pod

    def delete(self, name: str, *, grace_s: int) -> bool:
        """Ask for the Pod's deletion within ``grace_s``; False if it was already gone."""
        try:
            self._call(
                f"deleting pod {self.namespace}/{name}",
                self._api.delete_namespaced_pod,
                name,
                self.namespace,
                grace_period_seconds=grace_s,
            )
        except PodNotFoundError:
            return False
        return True

    def list(self, *, labels: str, fields: str) -> tuple[list[dict[str, Any]], str]:
        """The matching Pods and the list's resource version."""
        body = self._call(
            f"listing pods in {self.namespace}",
            self._api.list_namespaced_pod,
            self.namespace,
            label_selector=labels,
            field_selector=fields,
        )
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        return list(body.get("items") or []), version

    def watch(
        self, *, labels: str, fields: str, resource_version: str, timeout_s: int
    ) -> urllib3.BaseHTTPResponse:
        """An open watch (JSON lines, ending after ``timeout_s``); the caller closes it."""
        kwargs: dict[str, Any] = {
            "label_selector": labels,
            "field_selector": fields,
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        what = f"watching pods in {self.namespace}"
        try:
            resp = self._api.list_namespaced_pod(
                self.namespace,
                _preload_content=False,
                _request_timeout=(self._timeout_s, timeout_s + 15),
                **kwargs,
            )
        except ApiException as exc:
            raise translate(exc, what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesApiError(f"{what}: the API server did not answer: {exc}") from exc
        return cast(urllib3.BaseHTTPResponse, resp)


def client_configuration(api_url: str | None) -> k8s.Configuration:
    """``api_url`` if given, else the in-cluster service account, else the kubeconfig."""
    cfg = k8s.Configuration()
    if api_url:
        cfg.host = api_url.rstrip("/")
        return cfg
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except ConfigException:
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg, persist_config=False
            )
        except (ConfigException, OSError) as exc:
            raise ConfigError(
                "MIGSERVE_RUNTIME=kubernetes, but there is no in-cluster service account, "
                f"no kubeconfig and no MIGSERVE_K8S_API_URL: {exc}"
            ) from exc
    return cfg


def namespace_of(configured: str, *, service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The configured namespace, else the service account's, else ``default``."""
    if configured:
        return configured
    try:
        return service_account_file.read_text().strip() or "default"
    except OSError:
        return "default"


async def open_runtime(
    settings: PodSettings,
    *,
    node: str,
    bridge_env: Mapping[str, str],
    watch_timeout_s: int = 300,
) -> KubernetesRuntime:
    """Connect, list this node's engine Pods, start watching them.

    ``close()`` on the runtime stops the watch and releases the client; the
    Pods keep running.
    """
    if not settings.bridge_image:
        raise ConfigError("MIGSERVE_RUNTIME=kubernetes needs MIGSERVE_BRIDGE_IMAGE")
    api_client = k8s.ApiClient(client_configuration(settings.api_url))
    api = PodApi(k8s.CoreV1Api(api_client), namespace=namespace_of(settings.namespace))
    watch = PodWatch(api, node=node, watch_timeout_s=watch_timeout_s)
    try:
        await asyncio.to_thread(watch.relist)
    except BaseException:
        api_client.close()  # type: ignore[no-untyped-call]
        raise
    watch.start()
    log.info("kubernetes runtime: %d engine pod(s) of %s in namespace %s",
             len(watch.all()), node, api.namespace)  # fmt: skip
    return KubernetesRuntime(
        api=api,
        watch=watch,
        node=node,
        settings=settings,
        bridge_env=bridge_env,
        on_close=api_client.close,
    )
