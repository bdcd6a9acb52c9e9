"""Shared fixtures: every test gets its own output root, so tests never see each other's files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def output_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh `$GMAI_OUTPUT_ROOT` (and demo raw/benchmark roots under it) for one test."""
    root = tmp_path / "out"
    root.mkdir()
    monkeypatch.setenv("GMAI_OUTPUT_ROOT", str(root))
    monkeypatch.delenv("GMAI_RAW_ROOT", raising=False)
    monkeypatch.delenv("GMAI_BENCHMARK_ROOT", raising=False)
    monkeypatch.delenv("GMAI_CATALOG_DIR", raising=False)
    monkeypatch.setenv("GMAI_LLM_BACKEND", "template")
    return root


@pytest.fixture
def storage(output_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The `storage` resource on the test's output root, as the demo profile binds it (demo inputs generated
    under it). `$GMAI_OUTPUT_ROOT` then points at a decoy folder: an asset that read the environment
    instead of its resource would write there, and the test's assertions on `output_root` would fail."""
    from storage_fixtures import storage_at

    monkeypatch.setenv("GMAI_OUTPUT_ROOT", str(tmp_path / "decoy_not_the_resource"))
    return storage_at(output_root)
