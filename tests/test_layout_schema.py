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
        'reader: {kind: layout, images: "*.svs", label: slide, convert: {kind: slides}}',
        "2d_cls",
        "field 'reader.layout.convert': Input tag 'slides' found using 'kind' does not match",
    ),
    "converter_option_typo": (
        'reader: {kind: layout, images: "{s}.svs", masks: "{s}.xml", '
        "convert: {kind: wsi, magnification: 10, tile_sise: 256, annotations: {format: asap_xml}}}",
        "2d_seg",
        "field 'reader.layout.convert.wsi.tile_sise': Extra inputs are not permitted",
    ),
    "converter_wrong_task": (
        'reader: {kind: layout, images: "{case}/*.dcm", masks: "{case}/m.nii.gz", '
        "convert: {kind: dicom_series, mask: {kind: volume}}}",
        "2d_seg",
        "convert.kind dicom_series gives 3d_seg rows, not 2d_seg",
    ),
    "series_mask_not_stated": (
        'reader: {kind: layout, images: "{case}/*.dcm", masks: "{case}/Ground/*.png", convert: {kind: dicom_series}}',
        "3d_seg",
        "convert.mask: say how the labels are stored",
    ),
    "rle_without_join": (
        'reader: {kind: layout, images: "{id}.png", convert: {kind: rle, order: column}}',
        "2d_seg",
        "convert.kind rle needs reader.table with join",
    ),
    "rle_order_not_stated": (
        'reader: {kind: layout, images: "{id}.png", table: {file: t.csv, join: {column: id, field: id}}, '
        "convert: {kind: rle}}",
        "2d_seg",
        "field 'reader.layout.convert.rle.order': Field required",
    ),
    "slide_polygons_without_format": (
        'reader: {kind: layout, images: "{s}.tif", masks: "{s}.xml", convert: {kind: wsi, magnification: 10}}',
        "2d_seg",
        "convert.annotations: say the annotation files' format",
    ),
    "background_tiles_without_label": (
        'reader: {kind: layout, images: "{s}.tif", masks: "{s}.xml", '
        "convert: {kind: wsi, mpp: 1, background_tiles: 4, annotations: {format: asap_xml}}}",
        "2d_cls",
        "convert.background_label: name the label of background tiles",
    ),
    "unannotated_on_nothing": (
        'reader: {kind: layout, images: "{s}.tif", masks: "{s}.xml", convert: {kind: wsi, mpp: 1, '
        "annotations: {format: asap_xml}, unannotated: {group: normal}}}",
        "2d_seg",
        "convert.unannotated: 'group' is neither a template field",
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


def test_every_converter_kind_has_a_reader() -> None:
    """The extension point: each `reader.convert` kind of the schema is read by a reader in the layout module."""
    from typing import get_args

    from gmai_pipeline.layouts import CONVERT_TASKS, Convert
    from gmai_pipeline.readers import layout

    kinds = {m.model_fields["kind"].default for m in get_args(get_args(Convert)[0])}
    assert kinds == set(CONVERT_TASKS) == set(layout.CONVERTERS)


def test_boxes_normalized_centre_size_and_corners() -> None:
    from gmai_pipeline.layouts import LayoutReader
    from gmai_pipeline.readers.layout import _row_boxes

    def boxes(spec: dict, values: dict):
        opts = LayoutReader.model_validate(
            {"kind": "layout", "images": "*.png", "table": {"file": "t.csv", "image": "f"}, "boxes": spec}
        )
        return [(a.box, a.normalized, a.error) for a in _row_boxes(opts, values, ("x",), "t.csv line 2")]

    cxcywh = {"columns": ["cx", "cy", "w", "h"], "format": "cxcywh", "units": "normalized"}
    assert boxes(cxcywh, {"cx": "0.5", "cy": "0.5", "w": "0.2", "h": "0.4"}) == [
        ((0.4, 0.3, 0.6, 0.7), True, None)
    ]
    cell = {"column": "bbox", "format": "xywh"}
    assert boxes(cell, {"bbox": "[[1, 2, 3, 4], [5, 6, 7, 8]]"}) == [
        ((1, 2, 4, 6), False, None),
        ((5, 6, 12, 14), False, None),
    ]
    ((_, _, error),) = boxes(cell, {"bbox": "[1, 2]"})
    assert error[0] == "missing_box" and "4 numbers" in error[1]


def test_tables_sniff_their_delimiter_and_keep_only_wanted_columns(tmp_path: Path) -> None:
    from gmai_pipeline.readers.tables import TableError, read_table

    tsv = b"image\tlabel\tnote\nx.png\tnormal\tok, fine\n"
    csv = b"image_id;split\ns0000;train\n"
    t = read_table(tsv, "a.tsv", ["image", "label"])
    assert t.rows == [(2, {"image": "x.png", "label": "normal"})]
    assert read_table(csv, "b.csv", ["split", 0]).rows == [(2, {"split": "train", 0: "s0000"})]
    with pytest.raises(TableError, match="not in the header"):
        read_table(csv, "b.csv", ["dx"])
