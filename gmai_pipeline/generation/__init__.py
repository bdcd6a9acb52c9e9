"""Annotation-guided generation (GMAI-VL Table 2): captions, region captions, VQA and Chinese translation.

Plain Python, no dagster: prompts (versioned files) -> canonical requests (SHA-256 keys) ->
content-addressed cache -> a backend (template | openai | openai_batch) -> validation ->
GENERATED_SCHEMA rows or quarantine rows.
"""
