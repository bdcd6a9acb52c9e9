"""Print where the demo's outputs are (`make demo` ends with this)."""

from __future__ import annotations

from pathlib import Path

from gmai_pipeline.settings import get_settings
from gmai_pipeline.storage import OutputLayout


def _count(path: Path, pattern: str) -> int:
    return sum(1 for _ in path.glob(pattern)) if path.exists() else 0


def main() -> None:
    out = OutputLayout(get_settings().output_root)
    rows = [
        ("manifests", out.root / "manifests", "*.parquet"),
        ("normalized tables", out.root / "normalized", "*.parquet"),
        ("quarantine tables", out.root / "quarantine", "*.parquet"),
        ("stored images", out.images, "**/*.*"),
        ("generated records", out.root / "generated", "*/*.parquet"),
        ("WebDataset shards", out.release / "shards", "*.tar"),
        ("annotation files", out.release / "annotations", "*.jsonl"),
        ("release images", out.release / "images", "**/*.*"),
        ("training mixtures", out.mixtures, "*.jsonl"),
        ("training stages", out.training, "stage*/export"),
    ]
    print(f"\nOutputs under {out.root}:")
    for label, path, pattern in rows:
        print(f"  {label:<20} {_count(path, pattern):>6}  {path}")
    for name in ("annotations.parquet", "decontaminated.parquet", "decontamination_report.parquet"):
        p = out.root / name
        print(f"  {name:<32} {'yes' if p.exists() else 'missing':>7}")
    card = out.release / "README.md"
    if card.exists():
        print(f"\nDataset card: {card}")
    print(f"Dagster instance (runs, logs): {out.dagster_home}  ->  `make ui` to browse them")


if __name__ == "__main__":
    main()
