"""Reading a JSON request body within the limits: content type, size."""

from __future__ import annotations

from starlette.requests import Request

from migserve_gateway.core.errors import ApiError


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this server's limit of {limit} bytes",
        reason="body_too_large",
        code="body_too_large",
    )


async def read_json_body(request: Request, limit: int) -> bytes:
    """The raw body; ApiError 415 for a non-JSON content type, 413 above ``limit`` bytes.

    A missing content type is accepted (curl -d without -H sends form encoding,
    which is refused; clients that send nothing are treated as JSON).
    """
    headers = request.headers
    content_type = headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {content_type!r}",
            reason="content_type",
            code="unsupported_media_type",
        )
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if chunk:
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
