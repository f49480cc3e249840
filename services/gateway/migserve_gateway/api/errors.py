"""Exception handlers: every error leaves as OpenAI-style JSON, and is counted.

Client errors (4xx) are counted in ``migserve_gateway_bad_requests_total`` by
reason and logged at INFO; anything unexpected becomes a 500 with a generic
message (the traceback goes to the log, not to the client).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from migserve_gateway.core.errors import ApiError, error_body
from migserve_gateway.core.render_text import tgi_error_body
from migserve_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

#: the TGI routes (``api.tgi``), whose errors take TGI's shape
TGI_PATHS = frozenset({"/", "/generate", "/generate_stream", "/info"})

JSON = "application/json"


def error_response(err: ApiError, *, tgi: bool = False) -> Response:
    """OpenAI's error shape, or TGI's for the TGI routes."""
    body = tgi_error_body(err) if tgi else error_body(err)
    return Response(body, status_code=err.status, media_type=JSON, headers=err.headers or None)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    param = ".".join(loc) or None
    return f"Invalid value for {param or 'the request'}: {first.get('msg', 'invalid')}", param


def answer_error(method: str, path: str, err: ApiError, metrics: GatewayMetrics) -> Response:
    """The response for ``err``; a client error is counted by reason and logged at INFO."""
    if err.status < 500:
        metrics.bad_requests.labels(reason=err.reason).inc()
        log.info("%s %s -> %d %s: %s", method, path, err.status, err.reason, err.message)
    else:
        log.warning("%s %s -> %d: %s", method, path, err.status, err.message)
    return error_response(err, tgi=path in TGI_PATHS)


def unexpected_error(method: str, path: str) -> Response:
    """A 500 for a bug: the traceback goes to the log (call from an except block)."""
    log.exception("unexpected error on %s %s", method, path)
    return error_response(ApiError(500, "internal error; see the gateway log", reason="internal"))


def install_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    def answer(request: Request, err: ApiError) -> Response:
        return answer_error(request.method, request.url.path, err, metrics)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return answer(request, exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        reasons = {404: "not_found", 405: "method_not_allowed"}
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        err = ApiError(
            exc.status_code, message, reason=reasons.get(exc.status_code, f"http_{exc.status_code}")
        )
        response = answer(request, err)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return answer(request, ApiError(400, message, reason="invalid_param", param=param))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_error(request.method, request.url.path)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
