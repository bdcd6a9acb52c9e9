"""Print where the demo's outputs are (`make demo` ends with this)."""

from __future__ import annotations

from pathlib import Path

from gmai_pipeline.settings import output_root
from gmai_pipeline.storage import OutputLayout


def _count(path: Path, pattern: str) -> int:
    return sum(1 for _ in path.glob(pattern)) if path.exists() else 0


def _print_scores(folder: Path) -> None:
    """Each evaluated stage's benchmark scores (tiny random-init models score near chance: the loop is the point)."""
    import json

    summaries = sorted(folder.glob("*/summary.json")) if folder.exists() else []
    if not summaries:
        return
    models = {p.parent.name: json.loads(p.read_text()) for p in summaries}
    datasets = sorted({b["dataset"] for m in models.values() for b in m["benchmarks"]})
    print(f"\nBenchmark scores (%), VLMEvalKit exact matching; result files under {folder}:")
    print(f"  {'dataset':<20}" + "".join(f"{name:>22}" for name in models))
    for ds in datasets:
        cells = []
        for m in models.values():
            score = next((b.get("score") for b in m["benchmarks"] if b["dataset"] == ds), None)
            ok = isinstance(score, int | float) and score == score
            cells.append(f"{score:>22.1f}" if ok else f"{'-':>22}")
        print(f"  {ds:<20}" + "".join(cells))


def main() -> None:
    out = OutputLayout(output_root())
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
        ("evaluated models", out.root / "evaluation" / "vlmevalkit", "*/summary.json"),
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
    _print_scores(out.root / "evaluation" / "vlmevalkit")
    print(f"Dagster instance (runs, logs): {out.dagster_home}  ->  `make ui` to browse them")


if __name__ == "__main__":
    main()
