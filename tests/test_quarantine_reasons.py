"""One vocabulary of quarantine reasons, and one typed sample, shared by the readers, generation and release."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pyarrow as pa
import pytest

from gmai_pipeline.quarantine import (
    FAMILIES,
    NORMALIZE_REASONS,
    STAGES,
    Reason,
    batch_failure,
    http_failure,
    is_reason,
)
from gmai_pipeline.sample import ANNOTATION_COLUMNS, COLUMNS, Sample
from gmai_pipeline.schemas import GENERATED_SCHEMA, NORMALIZED_SCHEMA, QUARANTINE_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gmai_pipeline"
# Where a reason is spelled: the argument that holds it, per callable.
REASON_ARGUMENT = {
    "ImageError": 0,
    "ArchiveError": 0,
    "TableError": 0,
    "Failure": 0,
    "_bad": 0,
    "Quarantined": 2,
    "quarantine_all": 3,
    "quarantine_row": 3,
    "_rejection": 1,
    "rejected": 2,
}


def _callee(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_dagster(node: ast.Call) -> bool:
    f = node.func
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "dg"


def _alternatives(expr: ast.expr) -> list[ast.expr]:
    """The values an expression may take: both sides of `a or b` and of `a if x else b`."""
    if isinstance(expr, ast.BoolOp):
        return [leaf for v in expr.values for leaf in _alternatives(v)]
    if isinstance(expr, ast.IfExp):
        return _alternatives(expr.body) + _alternatives(expr.orelse)
    return [expr]


def _spelled_reasons() -> tuple[dict[str, list[str]], list[str]]:
    """(bare string codes where a reason goes -> where, `Reason.X` names used) across the package."""
    literals: dict[str, list[str]] = {}
    members: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            candidates: list[ast.expr] = []
            # (`dg.Failure` is Dagster's exception, not generation's `Failure`)
            if isinstance(node, ast.Call) and _callee(node) in REASON_ARGUMENT and not _is_dagster(node):
                i = REASON_ARGUMENT[_callee(node)]  # type: ignore[index]
                candidates += node.args[i : i + 1]
                candidates += [k.value for k in node.keywords if k.arg == "reason"]
            elif isinstance(node, ast.Dict):
                candidates += [
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "reason"
                ]
            elif isinstance(node, ast.keyword) and node.arg == "error" and isinstance(node.value, ast.Tuple):
                candidates += node.value.elts[:1]  # Annotation(error=(reason, detail))
            for c in candidates:
                for leaf in _alternatives(c):
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                        literals.setdefault(leaf.value, []).append(where)
                    elif isinstance(leaf, ast.JoinedStr):
                        literals.setdefault(ast.unparse(leaf), []).append(where)
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Reason"
                and node.attr.isupper()
            ):
                members.append(node.attr)
    return literals, members


def test_every_reason_the_package_spells_is_a_member() -> None:
    literals, members = _spelled_reasons()
    assert len(members) > 250  # the scan sees the readers, converters, generation and release
    assert not {m for m in members if m not in Reason.__members__}
    not_members = {
        code: where[:3] for code, where in literals.items() if code not in Reason._value2member_map_
    }
    assert not not_members, f"reasons spelled outside the enum: {not_members}"


def test_every_member_has_a_stage_and_a_meaning_and_keeps_its_string() -> None:
    assert len({r.value for r in Reason}) == len(Reason)
    for r in Reason:
        assert r.stage in STAGES and r.meaning.strip() and r.value == r.name.lower()
        assert f"{r}" == r.value == str(r) and r == r.value  # what lands in the column
    table = pa.Table.from_pylist(
        [
            {
                "dataset": "d",
                "source_path": "a.png",
                "step": "read",
                "reason": Reason.UNREADABLE,
                "detail": "a.png",
            }
        ],
        schema=QUARANTINE_SCHEMA,
    )
    assert table["reason"].to_pylist() == ["unreadable"]
    assert {
        r for r in Reason if r.stage == "normalize"
    } == NORMALIZE_REASONS and "truncated" in NORMALIZE_REASONS


def test_codes_with_a_value_are_recognised_as_their_family() -> None:
    assert is_reason(http_failure(503)) and is_reason("http_429")
    assert batch_failure({"failed", "expired"}) == "batch_expired_failed" and is_reason(
        "batch_expired_failed"
    )
    assert is_reason("batch_missing") and is_reason(Reason.NO_ID)
    assert not is_reason("http_") and not is_reason("batch_completed") and not is_reason("unreadble")


def test_readme_lists_exactly_the_reasons() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Quarantine reasons", 1)[1].split("\n#", 1)[0]
    listed = dict(re.findall(r"^\| `([^`]+)` \| (\w+) \|", section, flags=re.M))
    expected = {r.value: r.stage for r in Reason} | {family: "generate" for family in FAMILIES}
    assert listed == expected


def test_sample_is_the_normalized_schema_in_python() -> None:
    assert tuple(NORMALIZED_SCHEMA.names) == COLUMNS
    assert set(ANNOTATION_COLUMNS) <= set(GENERATED_SCHEMA.names)
    row = {
        "sample_id": "2d#det#xray#ds#a.png",
        "dataset": "ds",
        "source_path": "a.png",
        "slice_axis": None,
        "slice_index": None,
        "split": "train",
        "image": "images/2d/det/xray/ds/a.png",
        "image_md5": "0" * 32,
        "width": 64,
        "height": 48,
        "modality": "X-Ray",
        "label": "nodule",
        "department": "Pulmonary Medicine",
        "task_type": "2d_det",
        "clinical_task": "Lesion Detection",
        "bbox": [1, 2, 30, 40],
    }
    sample = Sample.from_row({**row, "shard": "007"})  # decontaminated's extra column is not a field
    assert sample.bbox == (1, 2, 30, 40) and sample.to_row() == row
    table = pa.Table.from_pylist([sample.to_row()], schema=NORMALIZED_SCHEMA)
    assert Sample.from_row(table.to_pylist()[0]) == sample
    with pytest.raises(AttributeError):
        sample.label = "other"  # type: ignore[misc]


def test_a_catalog_fixture_declaring_an_unknown_reason_is_refused() -> None:
    from pydantic import ValidationError

    from gmai_pipeline.catalog_records import Yields

    assert Yields(labels=("a",), quarantined={"split_excluded": 1}).quarantined == {"split_excluded": 1}
    with pytest.raises(ValidationError, match="split_exclued: not a quarantine reason"):
        Yields(labels=("a",), quarantined={"split_exclued": 1})
