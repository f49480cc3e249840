"""Checks on a model spec beyond its schema: profile names and replica bounds."""

from __future__ import annotations

import msgspec
from migserve_shared.messages import ModelSpec
from migserve_shared.mig import GPU_MODELS, Profile

from migserve_gateway.core.decoding import decode_body
from migserve_gateway.core.errors import bad_request


def _known_profiles() -> list[str]:
    names: list[str] = []
    for gpu in GPU_MODELS:
        names.extend(p.name for p in gpu.profiles if p.name not in names)
    return names


def _profiles_named(name: str) -> dict[str, Profile]:
    """GPU model name -> its profile called ``name``."""
    return {g.name: p for g in GPU_MODELS for p in g.profiles if p.name == name}


def _size(p: Profile) -> tuple[int, int]:
    return (p.memory_slices, p.compute_slices)


def check_model_spec(spec: ModelSpec) -> None:
    """Raise ApiError(400) when the spec names unknown profiles or contradicts itself."""
    for param in ("min_profile", "max_profile"):
        name: str | None = getattr(spec, param)
        if name is not None and not _profiles_named(name):
            raise bad_request(
                f"{param} {name!r} is not a MIG profile of any known GPU "
                f"(known: {', '.join(_known_profiles())})",
                reason="bad_model_spec",
                param=param,
            )
    if spec.min_replicas > spec.max_replicas:
        raise bad_request(
            f"min_replicas ({spec.min_replicas}) is greater than max_replicas "
            f"({spec.max_replicas})",
            reason="bad_model_spec",
            param="min_replicas",
        )
    if spec.min_profile and spec.max_profile:
        lows, highs = _profiles_named(spec.min_profile), _profiles_named(spec.max_profile)
        shared = lows.keys() & highs.keys()
        if shared and all(_size(lows[g]) > _size(highs[g]) for g in shared):
            raise bad_request(
                f"min_profile {spec.min_profile!r} is larger than max_profile {spec.max_profile!r}",
                reason="bad_model_spec",
                param="min_profile",
            )


_spec_decoder = msgspec.json.Decoder(ModelSpec)
_keys_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SPEC_FIELDS = frozenset(ModelSpec.__struct_fields__)


def parse_model_spec(body: bytes) -> ModelSpec:
    """Decode and check a spec from a request body; ApiError(400) says what is wrong.

    Unlike the tolerant KV decoding (which must accept fields of newer
    versions), a spec a person sends may not carry unknown fields: a typo
    would otherwise be silently ignored.
    """
    spec = decode_body(_spec_decoder, body)
    unknown = sorted(_keys_decoder.decode(body).keys() - _SPEC_FIELDS)
    if unknown:
        raise bad_request(
            f"Unknown parameter: '{unknown[0]}' "
            f"(a model spec has {', '.join(sorted(_SPEC_FIELDS))})",
            reason="unknown_field",
            param=unknown[0],
        )
    check_model_spec(spec)
    return spec
