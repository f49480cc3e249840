"""Rendered deployment files, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ROOT, VARIANTS, compose_config, render

Docs = list[dict[str, Any]]


@pytest.fixture(scope="session")
def rendered() -> dict[str, Docs]:
    """kustomize output of the base and each overlay, by folder."""
    return {variant: render(ROOT / variant) for variant in VARIANTS}


@pytest.fixture(scope="session")
def rendered_with_operator(tmp_path_factory: pytest.TempPathFactory) -> Docs:
    """overlays/h100 plus components/prometheus-operator (the only custom resources)."""
    folder: Path = tmp_path_factory.mktemp("with-operator")
    # kustomize takes relative paths only
    overlay = os.path.relpath(ROOT / "k8s/overlays/h100", folder)
    component = os.path.relpath(ROOT / "k8s/components/prometheus-operator", folder)
    (folder / "kustomization.yaml").write_text(
        f"resources:\n  - {overlay}\ncomponents:\n  - {component}\n"
    )
    return render(folder)


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` normalises it."""
    return compose_config()
