"""Load the models a local stack registers from a YAML file, validated as ModelSpecs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml
from migserve_shared.errors import ConfigError
from migserve_shared.messages import ModelSpec

DEFAULT_MODEL_FILE = Path(__file__).resolve().parents[2] / "models" / "default.yaml"


def read_model_entries(path: Path) -> list[dict[str, object]]:
    """The mappings under ``models:`` in the YAML file ``path`` (ConfigError naming
    the file and entry for anything else)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"model file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise ConfigError(f"model file {path} must have a non-empty list under 'models'")
    entries: list[dict[str, object]] = []
    for i, entry in enumerate(doc["models"]):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: models[{i}] is not a mapping")
        entries.append(dict(entry))
    return entries


def load_models(path: Path, *, engine: str | None = None) -> list[ModelSpec]:
    """Read ``models: [...]`` from ``path``; ``engine`` overrides every entry's engine."""
    specs: list[ModelSpec] = []
    for i, entry in enumerate(read_model_entries(path)):
        if engine is not None:
            entry = {**entry, "engine": engine}
        try:
            specs.append(msgspec.convert(entry, ModelSpec))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: models[{i}]: {exc}") from exc
    return specs
