"""The layout schema: what each declaration means, and errors that name the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from layout_fixtures import entry

from gmai_pipeline.catalog import CatalogError
from gmai_pipeline.layouts import Condition
from gmai_pipeline.readers.templates import Template, holds, number


def test_templates_fields_backreferences_and_wildcards() -> None:
    acdc = Template("{case}/{case}_frame{n}.nii.gz")
    assert acdc.fields == ["case", "n"]
    assert acdc.match("patient001/patient001_frame01.nii.gz") == {"case": "patient001", "n": "01"}
    assert acdc.match("patient001/patient002_frame01.nii.gz") is None  # the same field must repeat
    assert (
        acdc.prefix == "" and Template("RawData/Training/img/img{id}.nii.gz").prefix == "RawData/Training/img"
    )
    deep = Template("**/{stem}.dcm")
    assert deep.match("a/b/c.dcm") == {"stem": "c"} and deep.match("c.dcm") == {"stem": "c"}
    assert Template("img{id:\\d{4}}.nii.gz").match("img0001.nii.gz") == {"id": "0001"}
    assert Template("img{id:\\d{4}}.nii.gz").match("img1.nii.gz") is None
    assert Template("*/x?.png").match("any/x1.png") == {} and Template("*/x?.png").match("a/b/x1.png") is None


def test_conditions_on_values_ranges_and_globs() -> None:
    assert number("amos_0507") == 507 and number("12.5") == 12.5 and number("abc") is None
    rng = Condition.model_validate({"min": 500})
    assert holds(rng, "amos_0507") and not holds(rng, "amos_0001") and not holds(rng, "x")
    assert holds(Condition.model_validate(["40X", "100X"]), "40X") and not holds(
        Condition.model_validate("40X"), "400X"
    )
    assert holds(Condition.model_validate({"glob": "*_test_*"}), "a_test_1.png")
    assert holds(Condition.model_validate({"not_in": ["R8"]}), None)
    assert holds(Condition.model_validate(0), "0")  # YAML numbers compare as text


BAD = {
    "unknown_field": (
        'reader: {kind: layout, images: "{label}/{file}", label: "{klass}"}',
        "2d_cls",
        "field 'klass' is not in the templates",
    ),
    "filter_on_nothing": (
        'reader: {kind: layout, images: "{label}/{file}", label: "{label}", filters: {mag: 40X}}',
        "2d_cls",
        "'mag' is neither a template field",
    ),
    "no_box_format": (
        "reader: {kind: layout, images: '*.png', table: {file: a.csv, image: f}, label: {column: c}, "
        "boxes: {columns: [a, b, c, d]}}",
        "2d_det",
        "boxes.format': Field required",
    ),
    "det_without_boxes": (
        "reader: {kind: layout, images: '*.png', table: {file: a.csv, image: f}, label: {column: c}}",
        "2d_det",
        "2d_det with kind layout needs reader.table, reader.boxes and reader.label",
    ),
    "seg_without_masks": (
        'reader: {kind: layout, images: "{case}.nii.gz"}',
        "3d_seg",
        "3d_seg needs reader.masks",
    ),
    "cls_without_label": (
        'reader: {kind: layout, images: "{a}/{file}"}',
        "2d_cls",
        "2d_cls needs reader.label",
    ),
    "converter_not_available": (
        'reader: {kind: layout, images: {path: "*.svs", format: wsi}, label: slide}',
        "2d_cls",
        "format 'wsi' is not available (known: auto)",
    ),
    "unbalanced_braces": (
        'reader: {kind: layout, images: "{case/x.png", label: x}',
        "2d_cls",
        "unbalanced braces",
    ),
    "modality_not_in_vocabulary": (
        "reader: {kind: msd, modality: {rules: [{when: {case: {min: 500}}, value: MRI}]}}",
        "3d_seg",
        "reader.modality names ['MRI'], not in assets/vocabulary.yaml",
    ),
    "table_both_modes": (
        "reader: {kind: layout, images: '*.png', table: {file: a.csv, image: f, join: {column: c, field: x}}, "
        "label: {column: c}}",
        "2d_cls",
        "exactly one of image (the table names the images) or join",
    ),
    "uncertain_without_policy": (
        "reader: {kind: layout, images: '*.png', table: {file: a.csv, image: f}, "
        "label: {columns: [A], uncertain: {values: [-1]}}}",
        "2d_cls",
        "label.uncertain.policy': Field required",
    ),
    "two_label_sources": (
        "reader: {kind: layout, images: '*.png', table: {file: a.csv, image: f}, label: {column: c, columns: [A]}}",
        "2d_cls",
        "exactly one of field, column, value, rules, columns",
    ),
    "column_without_table": (
        "reader: {kind: layout, images: '{x}.png', label: {column: dx}}",
        "2d_cls",
        "label: a column needs a table",
    ),
    "empty_expect": (
        'reader: {kind: image_folder}\nexpect: {source: "paper"}',
        "2d_cls",
        "at least one of images",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_declarations_fail_with_the_field_and_the_problem(tmp_path: Path, case: str) -> None:
    body, task, needle = BAD[case]
    with pytest.raises(CatalogError) as err:
        entry(tmp_path, "bad", task, body)
    assert needle in str(err.value) and "bad.yaml" in str(err.value)


def test_every_reader_has_root_and_unpack(tmp_path: Path) -> None:
    for kind, task in (
        ("image_folder", "2d_cls"),
        ("coco", "2d_det"),
        ("msd", "3d_seg"),
        ("dicom", "2d_cls"),
    ):
        source = entry(tmp_path, "ok", task, f"reader: {{kind: {kind}, root: data/v1, unpack: [data.zip]}}")
        assert source.reader.root == "data/v1" and source.reader.unpack == ("data.zip",)
    with pytest.raises(CatalogError, match="must stay inside"):
        entry(tmp_path, "ok", "2d_cls", "reader: {kind: image_folder, root: ../other}")
