"""Estimated cost from `resources/prices.yaml` (marked unverified there): metadata, not billing."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from gmai_pipeline import safe_yaml
from gmai_pipeline.settings import RESOURCES_DIR

PRICES_FILE = RESOURCES_DIR / "prices.yaml"


@lru_cache(maxsize=2)
def load_prices(path: Path = PRICES_FILE) -> dict[str, Any]:
    return safe_yaml.load(path)


def price_of(model: str, prices: dict[str, Any] | None = None) -> dict[str, float] | None:
    """The entry whose name is the longest prefix of `model` (snapshots share their family's price)."""
    prices = prices or load_prices()
    names = [n for n in prices["models"] if model == n or model.startswith(n + "-") or model.startswith(n)]
    return prices["models"][max(names, key=len)] if names else None


def estimate_usd(model: str, tokens_in: int, tokens_out: int, batch: bool = False) -> float | None:
    """None when the model has no price entry (e.g. a local vLLM model): unknown, not zero."""
    prices = load_prices()
    entry = price_of(model, prices)
    if entry is None:
        return None
    usd = tokens_in / 1e6 * entry["input_per_1m"] + tokens_out / 1e6 * entry["output_per_1m"]
    return usd * (1 - prices.get("batch_discount", 0.0)) if batch else usd
