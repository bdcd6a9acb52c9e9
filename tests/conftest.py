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
