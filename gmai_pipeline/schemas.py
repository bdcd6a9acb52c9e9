"""Arrow schemas of the tables that cross stage boundaries: the contract between stages and with outside tools.

Each stage writes exactly these columns; a reader of a table never has to guess its shape.
"""

from __future__ import annotations

import pyarrow as pa

BBOX = pa.list_(pa.int32(), 4)

# normalized/<dataset>.parquet, annotations.parquet (and decontaminated.parquet, plus its shard column);
# a row in Python is a `sample.Sample`
NORMALIZED_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("source_path", pa.string()),  # relative to the dataset's raw folder
        ("slice_axis", pa.string()),  # "x" | "y" | "z", null for 2D
        ("slice_index", pa.int32()),  # null for 2D
        ("split", pa.string()),
        ("image", pa.string()),  # relative to the output root: images/{dim}/{task}/{modality}/{dataset}/...
        ("image_md5", pa.string()),  # MD5 of the stored image file
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("modality", pa.string()),
        ("label", pa.string()),
        ("department", pa.string()),
        ("task_type", pa.string()),
        ("clinical_task", pa.string()),
        ("bbox", BBOX),  # null, or [x0, y0, x1, y1] in pixels of the stored image
    ]
)

# decontaminated.parquet: the normalized columns plus the generation partition of each row, computed once
# (`partitions.shard_of(sample_id)`). Rows are written in row groups of one shard each, so a generation
# partition reads only its own row groups; the file's metadata says how many shards the column was made for.
SHARD_COLUMN = "shard"
SHARDS_METADATA_KEY = b"gmai.generation_shards"
DECONTAMINATED_SCHEMA = NORMALIZED_SCHEMA.append(pa.field(SHARD_COLUMN, pa.string()))

# quarantine/<dataset>.parquet
QUARANTINE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("source_path", pa.string()),
        ("step", pa.string()),  # e.g. "read", "normalize", "generate"
        ("reason", pa.string()),  # a `quarantine.Reason` value, e.g. "unreadable", "shape_mismatch"
        ("detail", pa.string()),  # human-readable, names the file
    ]
)

# generated/{captions,vqa,translations}/<partition>.parquet: one row per training record
GENERATED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # unique: f"{sample_id}#{kind}" (+ "#x0_y0_x1_y1" for a box, + "#zh" if Chinese)
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("image", pa.string()),  # relative to the output root
        ("image_md5", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("modality", pa.string()),
        ("label", pa.string()),
        ("department", pa.string()),
        ("task_type", pa.string()),
        ("clinical_task", pa.string()),
        ("bbox", BBOX),
        ("kind", pa.string()),  # "caption" | "region_caption" | "vqa"
        ("language", pa.string()),  # "en" | "zh"
        # JSON: [{"from": "human", "value": "<image>\n..."}, {"from": "gpt", ...}]
        ("conversations", pa.string()),
        # "{backend}:{model}", e.g. "template:template-v1", "openai:gpt-4o-2024-08-06"
        ("generator", pa.string()),
        ("prompt_version", pa.string()),
        ("request_sha256", pa.string()),  # SHA-256 of the canonical request (also the cache key)
        ("label_mentioned", pa.bool_()),
        ("confidence", pa.float32()),  # mean token probability when the endpoint returns logprobs, else null
        ("source_record_id", pa.string()),  # for translations: the English record's id
    ]
)
