"""`Reason`: every code the `reason` column of a quarantine table can hold, each with what it means.

Four kinds of table share `schemas.QUARANTINE_SCHEMA`: `quarantine/<dataset>.parquet` (normalization),
`generated/quarantine/...` (generation), `release/rejected.parquet` and `external/<corpus>.rejected.parquet`
(the release). Their codes are one vocabulary: a reader, a generation step and the release spell a
reason through this enum, never as a bare string, so a typo fails at import and the README's table is
checked against it (`tests/test_quarantine_reasons.py`). A `StrEnum`: the column keeps the very strings
it always held, and a member compares equal to its string.

Two families carry a value the enum cannot list: `http_<status>` (the endpoint's HTTP status after the
SDK's retries) and `batch_<statuses>` (the Batch API ended as `failed`, `expired` or `cancelled`); they
are built by `http_failure` / `batch_failure` and recognised by `is_reason`.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Reason(StrEnum):
    """A quarantine code; `stage` says which tables hold it, `meaning` what it says about the input."""

    stage: str
    meaning: str

    def __new__(cls, value: str, stage: str, meaning: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.stage = stage
        member.meaning = meaning
        return member

    # --- normalization: files and paths
    PATH_REFUSED = "path_refused", "normalize", "a link leading outside, a pipe or device, a path escaping the dataset folder, or a file that cannot be read"  # fmt: skip
    MISSING_FILE = "missing_file", "normalize", "a file an annotation (or the source scan) names is not in the dataset folder"  # fmt: skip
    CONTENT_CHANGED = "content_changed", "normalize", "the file's bytes are not those the source scan recorded (re-materialize its source)"  # fmt: skip
    NAME_TOO_LONG = "name_too_long", "normalize", "a file name longer than the file system allows"
    UNREFERENCED_FILE = "unreferenced_file", "normalize", "an image file in the reader's image folder that no annotation names"  # fmt: skip
    PACKED_ARCHIVE = "packed_archive", "normalize", "a compressed copy of a file the converter reads (unpack it first)"  # fmt: skip
    # --- normalization: decoding
    UNREADABLE = "unreadable", "normalize", "no decoder could read the file (corrupt, wrong format, not UTF-8 text)"  # fmt: skip
    TRUNCATED = "truncated", "normalize", "the file ends before its data does"
    UNSUPPORTED_CODEC = "unsupported_codec", "normalize", "a compression no installed decoder handles (e.g. a JPEG-lossless DICOM without its plugin)"  # fmt: skip
    TOO_LARGE = "too_large", "normalize", "its declared decoded size is over the decode budget (GMAI_DECODE_BUDGET_MB)"  # fmt: skip
    NON_FINITE = "non_finite", "normalize", "no finite pixel or voxel (all NaN or infinite)"
    NOT_AN_IMAGE = "not_an_image", "normalize", "a DICOM file without pixel data (a report, a structured document)"  # fmt: skip
    UNSUPPORTED_LAYOUT = "unsupported_layout", "normalize", "pixel data in a layout the converter does not handle (multi-frame, an odd shape)"  # fmt: skip
    BURNED_IN_TEXT_RISK = "burned_in_text_risk", "normalize", "a DICOM image that may carry burned-in patient text (privacy step)"  # fmt: skip
    # --- normalization: labels and splits
    MISSING_LABEL = "missing_label", "normalize", "no label for the input, or one that looks like an identifier"  # fmt: skip
    UNKNOWN_LABEL = (
        "unknown_label",
        "normalize",
        "a label (or mask value) not in the catalog entry's labels map",
    )
    UNCERTAIN_LABEL = "uncertain_label", "normalize", "an uncertain label cell whose stated policy is quarantine"  # fmt: skip
    CONFLICTING_LABELS = "conflicting_labels", "normalize", "annotators gave an input different labels, none by a majority"  # fmt: skip
    INVALID_LABEL = "invalid_label", "normalize", "a label value that is not a usable class code (not an integer, out of range)"  # fmt: skip
    NO_ANNOTATION = "no_annotation", "normalize", "an image without any annotation"
    NO_FINDING = "no_finding", "normalize", "a detection row or image that says there is no finding (nothing to box)"  # fmt: skip
    UNKNOWN_MODALITY = "unknown_modality", "normalize", "a per-case modality not in the vocabulary"
    SPLIT_EXCLUDED = (
        "split_excluded",
        "normalize",
        "its split is not among the catalog entry's training splits",
    )
    SPLIT_UNKNOWN = "split_unknown", "normalize", "in none of the split lists, and the reader has no default split"  # fmt: skip
    DUPLICATE_IMAGE = "duplicate_image", "normalize", "the same bytes (or decoded pixels) as an earlier input of the dataset"  # fmt: skip
    # --- normalization: boxes and masks
    MISSING_BOX = "missing_box", "normalize", "a detection annotation without a usable box"
    BOX_OUTSIDE_IMAGE = "box_outside_image", "normalize", "a box beyond the image (more than a pixel's tolerance) or not finite"  # fmt: skip
    DEGENERATE_BOX = "degenerate_box", "normalize", "a box of zero width or height"
    EMPTY_MASK = "empty_mask", "normalize", "a mask with no component above the size limits"
    UNSUPPORTED_MASK = "unsupported_mask", "normalize", "a mask whose values cannot be labels (float, negative, too many values)"  # fmt: skip
    SHAPE_MISMATCH = "shape_mismatch", "normalize", "image and mask (or images and labels) differ in shape"
    MASK_MISMATCH = "mask_mismatch", "normalize", "a mask whose grid or slices do not match its DICOM series"
    NOT_AN_AREA = "not_an_area", "normalize", "a shape that encloses no area (a point, a line)"
    LOW_CONFIDENCE = "low_confidence", "normalize", "an annotation below the confidence the catalog declares"
    DEGENERATE_POLYGON = "degenerate_polygon", "normalize", "a polygon with too few distinct points to fill"
    INVALID_RLE = "invalid_rle", "normalize", "a run-length encoding that cannot be decoded"
    RLE_OUTSIDE_IMAGE = "rle_outside_image", "normalize", "runs that reach beyond the image"
    # --- normalization: DICOM series (converters)
    NO_SERIES = "no_series", "normalize", "a DICOM file without the identifiers that group it into a series"
    NO_POSITION = "no_position", "normalize", "a DICOM slice without position, orientation or spacing"
    MISSING_SLICE = "missing_slice", "normalize", "a gap in the slice positions of a series"
    UNEVEN_SPACING = "uneven_spacing", "normalize", "slices of a series not evenly spaced"
    MIXED_ORIENTATION = "mixed_orientation", "normalize", "slices of a series with different orientations"
    DUPLICATE_POSITION = "duplicate_position", "normalize", "two slices of a series at the same position"
    INCONSISTENT_GEOMETRY = "inconsistent_geometry", "normalize", "slices of a series with different sizes or pixel spacing"  # fmt: skip
    TOO_FEW_SLICES = "too_few_slices", "normalize", "a series with fewer slices than the converter needs"
    # --- normalization: HDF5 arrays and whole-slide images (converters)
    MISSING_DATASET = "missing_dataset", "normalize", "an HDF5 file without the dataset the catalog names"
    NO_MAGNIFICATION = "no_magnification", "normalize", "a slide that does not state its magnification or pixel size"  # fmt: skip
    MAGNIFICATION_UNAVAILABLE = "magnification_unavailable", "normalize", "a slide that cannot be read at the magnification asked for"  # fmt: skip

    # --- generation: inputs
    HELD_BACK_LICENCE = "held_back_licence", "generate", "its source does not allow a non-local LLM endpoint (external_llm_allowed)"  # fmt: skip
    DUPLICATE_ANNOTATION = "duplicate_annotation", "generate", "the same box and label on the same image twice"  # fmt: skip
    IMAGE_MISSING = "image_missing", "generate", "the stored image is not under the output root"
    IMAGE_UNSUPPORTED = "image_unsupported", "generate", "the stored image cannot be sent to the endpoint"
    # --- generation: answers that fail the checks (after one retry)
    EMPTY = "empty", "generate", "an empty caption"
    TOO_SHORT = "too_short", "generate", "a caption with too few words"
    MISSING_THIS_REGION = "missing_this_region", "generate", "a region caption that does not start with 'This region'"  # fmt: skip
    INVALID_JSON = "invalid_json", "generate", "a VQA or translation answer that is not JSON"
    SCHEMA_MISMATCH = "schema_mismatch", "generate", "JSON of another shape than the prompt asked for"
    PAIR_COUNT = "pair_count", "generate", "too few or too many question/answer pairs"
    EMPTY_QUESTION_OR_ANSWER = "empty_question_or_answer", "generate", "a VQA pair with an empty question or answer"  # fmt: skip
    TURN_COUNT_MISMATCH = "turn_count_mismatch", "generate", "a translation with another number of turns than the English"  # fmt: skip
    NOT_CHINESE = "not_chinese", "generate", "a translation with too little Chinese text"
    MEDICAL_TERM_MISSING = "medical_term_missing", "generate", "a translation that drops the label the English names"  # fmt: skip
    MALFORMED_RESPONSE = (
        "malformed_response",
        "generate",
        "the endpoint answered, but not with a chat completion",
    )
    # --- generation: the endpoint
    TIMEOUT = "timeout", "generate", "no response within the timeout, after the SDK's retries"
    RATE_LIMITED = "rate_limited", "generate", "HTTP 429 after the SDK's retries"
    CONNECTION_ERROR = "connection_error", "generate", "the endpoint could not be reached"
    REQUEST_ERROR = "request_error", "generate", "the request failed in the client (an SDK error)"
    BATCH_ERROR = "batch_error", "generate", "a Batch API output line without a status"
    BATCH_MISSING = "batch_missing", "generate", "a completed batch without a line for the request"
    TEMPLATE_CANNOT_TRANSLATE = "template_cannot_translate", "generate", "the template backend translates only text it wrote itself"  # fmt: skip
    UNKNOWN_TASK = "unknown_task", "generate", "a request for a task the backend does not know"

    # --- release: generated records that are not released
    NO_ID = "no_id", "release", "a generated row without an id"
    CONVERSATIONS_NOT_JSON = "conversations_not_json", "release", "conversations that do not parse as JSON"
    BAD_TURN_COUNT = "bad_turn_count", "release", "not an even number (at least two) of turns"
    BAD_TURN_SHAPE = "bad_turn_shape", "release", "a turn that is not {from, value} with a text value"
    BAD_ROLE_ORDER = "bad_role_order", "release", "turns that do not alternate human, gpt"
    EMPTY_TURN = "empty_turn", "release", "a turn with no text"
    IMAGE_TOKEN = "image_token", "release", "not exactly one <image>, at the start of the first turn"
    DUPLICATE_ID = "duplicate_id", "release", "a second row of an id already released"
    BENCHMARK_MATCH = "benchmark_match", "release", "an image decontamination removed (a generated table older than it)"  # fmt: skip
    MISSING_IMAGE = "missing_image", "release", "no image file for the record"
    BAD_RECORD = "bad_record", "release", "an external corpus record that cannot become a training record"
    BAD_TEXT_DIALOGUE = "bad_text_dialogue", "release", "a text dialogue line (stage III mixture) that cannot be used"  # fmt: skip


STAGES = ("normalize", "generate", "release")
NORMALIZE_REASONS = frozenset(r for r in Reason if r.stage == "normalize")  # what quarantine/<dataset> holds
# Codes that carry a value: prefix -> (pattern, meaning).
FAMILIES: dict[str, tuple[re.Pattern[str], str]] = {
    "http_<status>": (re.compile(r"http_\d+"), "the endpoint's HTTP error status, after the SDK's retries"),
    "batch_<statuses>": (
        re.compile(r"batch_(?:cancelled|expired|failed)(?:_(?:cancelled|expired|failed))*"),
        "the Batch API job ended without an answer for the request (its final statuses, sorted)",
    ),
}


def http_failure(status: int) -> str:
    return f"http_{status}"


def batch_failure(statuses: set[str]) -> str:
    """The code of requests left unanswered by batches that ended in `statuses` (none completed)."""
    return "batch_" + "_".join(sorted(statuses))


def is_reason(code: str) -> bool:
    """A code the quarantine tables may hold: a member, or one of the two families."""
    return code in Reason._value2member_map_ or any(p.fullmatch(code) for p, _ in FAMILIES.values())
