"""Generation for one partition: decontaminated rows -> requests -> cache/backend -> checks -> tables.

Every input row ends as exactly one generated record or one quarantine row (reason code), so
generated + quarantined = inputs holds per partition and is checked by the assets. An invalid
answer is retried once with a note appended to the prompt (a different request, so it has its
own cache key); transport failures are quarantined but not cached, so a re-run tries them again.
Samples of sources without `external_llm_allowed` are never sent to a non-local endpoint; they are
quarantined with reason `held_back_licence` (counted in metadata), so the equation still holds and
a later run against a local endpoint (vLLM on loopback) picks them up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gmai_pipeline import partitions
from gmai_pipeline.generation import prompts, validate
from gmai_pipeline.generation.backends import Backend, Result
from gmai_pipeline.generation.backends.openai_batch import BatchPending, OpenAIBatch
from gmai_pipeline.generation.backends.openai_online import OpenAIOnline
from gmai_pipeline.generation.backends.template import TemplateBackend, phrase_table
from gmai_pipeline.generation.cache import ResponseCache
from gmai_pipeline.generation.cost import estimate_usd
from gmai_pipeline.generation.requests import Completion, Failure, GenRequest, ImageRef
from gmai_pipeline.generation.translate import DEFAULT_FRACTION, selected
from gmai_pipeline.progress import Progress
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.sample import ANNOTATION_COLUMNS, COLUMNS, Sample
from gmai_pipeline.schemas import GENERATED_SCHEMA, QUARANTINE_SCHEMA
from gmai_pipeline.storage import OutputLayout, atomic_path, batched, iter_row_groups

log = logging.getLogger(__name__)
BACKENDS = ("template", "openai", "openai_batch")
GROUPS = {"captions": ("caption", "region_caption"), "vqa": ("vqa",)}
HELD_BACK = Reason.HELD_BACK_LICENCE
RETRY_NOTE = (
    "\n\nYour previous answer was rejected by an automatic check ({reason}). "
    "Answer again, following every rule and the output format exactly."
)


@dataclass
class LLMConfig:
    """What the LLM resource resolves to; the API key is read from the environment, never stored here."""

    backend: str = "template"
    model: str = "template-v1"
    base_url: str | None = None
    max_in_flight: int = 16
    timeout_s: float = 120.0
    max_retries: int = 8
    temperature: float | None = 0.2
    max_tokens: int | None = 1024
    image_detail: str | None = "low"
    logprobs: bool = True
    seed: int | None = None
    batch_poll_s: float = 60.0
    batch_max_wait_s: float = 26 * 3600.0
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    chunk_size: int = 2000
    translate_fraction: float = DEFAULT_FRACTION

    def params(self) -> dict[str, Any]:
        """The request parameters that go into the cache key (none for the template backend)."""
        if self.backend == "template":
            return {}
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "image_detail": self.image_detail,
            "logprobs": self.logprobs,
            "seed": self.seed,
        }


def make_backend(cfg: LLMConfig, layout: OutputLayout, api_key: str | None = None) -> Backend:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown LLM backend '{cfg.backend}' (expected one of {', '.join(BACKENDS)})")
    if cfg.backend == "template":
        return TemplateBackend(phrase_table()["version"])
    if cfg.model.startswith("template"):
        raise ValueError(
            f"backend '{cfg.backend}' needs a real model name (set GMAI_LLM_MODEL or the profile's llm.yaml)"
        )
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if cfg.backend == "openai":
        return OpenAIOnline(cfg.model, cfg.base_url, key, cfg.max_in_flight, cfg.timeout_s, cfg.max_retries)
    return OpenAIBatch(
        cfg.model,
        layout.llm_cache / "batches",
        cfg.base_url,
        key,
        poll_s=cfg.batch_poll_s,
        max_wait_s=cfg.batch_max_wait_s,
        max_requests=cfg.batch_max_requests,
        max_bytes=cfg.batch_max_bytes,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
    )


@dataclass
class Report:
    """What one partition run did; the Dagster layer turns it into metadata."""

    partition: str
    asset: str
    backend: str
    model: str
    inputs: int = 0
    generated: int = 0
    quarantined: int = 0
    requests_sent: int = 0
    cache_hits: int = 0
    retried: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    label_mentioned: int = 0
    held_back: int = 0
    by_kind: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cost_usd(self) -> float | None:
        return estimate_usd(self.model, self.tokens_in, self.tokens_out, batch=self.backend == "openai_batch")


class Runner:
    """Cache in front of a backend, with the counters that end in the report."""

    def __init__(self, backend: Backend, cache: ResponseCache, report: Report):
        self.backend, self.cache, self.report = backend, cache, report
        # Template answers are computed locally and deterministically: storing them would only cost disk.
        self.use_cache = backend.name != "template"

    def resolve(self, requests: list[GenRequest]) -> dict[str, Result]:
        unique = {r.key: r for r in requests}
        out: dict[str, Result] = dict(self.cache.get_many(unique)) if self.use_cache else {}
        self.report.cache_hits += len(out)
        misses = [r for key, r in unique.items() if key not in out]
        if misses:
            before = self.backend.requests_sent  # what went over the wire (a resumed batch sends nothing)
            results = self.backend.run(misses)
            self.report.requests_sent += self.backend.requests_sent - before
            answers = (
                [(k, r) for k, r in results.items() if isinstance(r, Completion)] if self.use_cache else []
            )
            self.cache.put_many(answers)  # the chunk's answers in one transaction
            for _key, result in answers:
                self.report.tokens_in += result.tokens_in
                self.report.tokens_out += result.tokens_out
            out.update(results)
        return out


# An input of a generation step: a normalized sample (captions, vqa) or an English record (translations).
Input = Sample | dict[str, Any]


def annotation(row: Input) -> dict[str, Any]:
    """The annotation columns a generated record copies from its input (GENERATED_SCHEMA's shared ones)."""
    return row.annotation() if isinstance(row, Sample) else {c: row[c] for c in ANNOTATION_COLUMNS}


def input_name(row: Input) -> str:
    """How a quarantine row names the input: the English record's id, or the sample's id."""
    return row.sample_id if isinstance(row, Sample) else (row.get("id") or row["sample_id"])


@dataclass
class Item:
    """One input row and the request made from it."""

    row: Input
    record_id: str
    request: GenRequest


Outcome = tuple[Item, Completion, validate.Checked]
Quarantined = tuple[Item, Reason | str, str]  # item, reason (or a family code), detail


def with_retry_note(request: GenRequest, reason: str) -> GenRequest:
    return GenRequest(
        task=request.task,
        model=request.model,
        prompt_version=f"{request.prompt_version}+retry1",
        prompt=request.prompt + RETRY_NOTE.format(reason=reason),
        params=request.params,
        image=request.image,
        fields=request.fields,
    )


def run_items(items: list[Item], runner: Runner) -> tuple[list[Outcome], list[Quarantined]]:
    """Resolve, check, retry the invalid ones once, and split into accepted and quarantined."""
    accepted: list[Outcome] = []
    quarantined: list[Quarantined] = []
    pending = items
    for attempt in (0, 1):
        results = runner.resolve([it.request for it in pending])
        retry: list[Item] = []
        for it in pending:
            result = results[it.request.key]
            if isinstance(result, Failure) and not result.retry:
                quarantined.append((it, result.reason, result.detail))
                continue
            if isinstance(result, Failure):  # answered, but not a chat completion: an invalid answer
                checked = validate.Checked(False, [], result.reason, result.detail)
            else:
                checked = validate.check(it.request.task, result.content, it.request.fields)
            if checked.ok:
                accepted.append((it, result, checked))
            elif attempt == 0:
                retry.append(Item(it.row, it.record_id, with_retry_note(it.request, checked.reason)))
            else:
                quarantined.append((it, checked.reason, checked.detail))
        runner.report.retried += len(retry)
        pending = retry
        if not pending:
            break
    return accepted, quarantined


# ---------------------------------------------------------------------------------------------
# Reading inputs and building requests


def partition_rows(layout: OutputLayout, partition: str, batch_size: int = 8192) -> Iterator[Sample]:
    """Samples of `decontaminated` whose sample_id hashes to `partition`, in file order.

    Reads only the partition's row groups (the table's `shard` column, written once by decontamination).
    A table written before that column existed is read whole and hashed row by row, as it used to be.
    """
    path = layout.decontaminated
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: materialize `decontaminated` first")
    batches = partitions.read_shard(path, partition, list(COLUMNS), batch_size)
    if batches is not None:
        for batch in batches:
            yield from map(Sample.from_row, batch.to_pylist())
        return
    log.warning(f"{path} has no shard column: every partition scans it whole; rematerialize `decontaminated`")
    for batch in iter_row_groups(path, list(COLUMNS), batch_size):
        for row in batch.to_pylist():
            if partitions.shard_of(row["sample_id"]) == partition:
                yield Sample.from_row(row)


def count_partition_rows(layout: OutputLayout, partition: str) -> int:
    """Rows of `decontaminated` in `partition`, from the table's footer where it has the shard column."""
    n = partitions.count_shard(layout.decontaminated, partition) if layout.decontaminated.exists() else None
    return n if n is not None else sum(1 for _ in partition_rows(layout, partition))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def record_id(sample: Sample | dict[str, Any], kind: str, seen: set[str]) -> str | None:
    """`{sample_id}#{kind}`, plus `#x0_y0_x1_y1` for a box and `#label` when an image has several labels.

    One image can carry several annotations (one row each), so the box and label keep ids unique.
    None for an exact duplicate annotation. `sample` may be its NORMALIZED_SCHEMA row.
    """
    if not isinstance(sample, Sample):
        sample = Sample.from_row(sample)
    base = f"{sample.sample_id}#{kind}"
    if sample.bbox is not None:
        base += "#" + "_".join(str(v) for v in sample.bbox)
    annotation = f"{base}\x00{sample.label}"
    if annotation in seen:
        return None
    seen.add(annotation)
    rid = base if base not in seen else f"{base}#{_slug(sample.label)}"
    seen.add(rid)
    return rid


def annotation_fields(row: Input) -> dict[str, Any]:
    """What a prompt and its checks may use of an input (never where the file came from)."""
    a = annotation(row)
    return {
        "sample_id": a["sample_id"],
        "modality": a["modality"],
        "department": a["department"],
        "label": a["label"],
        "clinical_task": a["clinical_task"],
        "bbox": list(a["bbox"]) if a["bbox"] is not None else None,
        "width": a["width"],
        "height": a["height"],
    }


def generation_request(task: str, row: Sample, image: ImageRef, cfg: LLMConfig, model: str) -> GenRequest:
    fields = annotation_fields(row)
    prompt_fields = {k: v for k, v in fields.items() if k != "sample_id"}  # the id names the source file
    prompt_fields["region"] = (
        f", in the region {prompts.format_bbox(fields['bbox'])}" if fields["bbox"] else ""
    )
    version, text = prompts.render(task, prompt_fields)
    return GenRequest(task, model, version, text, cfg.params(), image=image, fields=fields)


def conversation(turns: list[str]) -> str:
    """LLaVA turns, human first, `<image>` at the start of the first human turn."""
    out = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    out[0]["value"] = "<image>\n" + out[0]["value"]
    return json.dumps(out, ensure_ascii=False)


def english_turns(kind: str, sample: Sample, checked: validate.Checked) -> list[str]:
    if kind == "vqa":
        return checked.turns
    bbox = list(sample.bbox) if sample.bbox is not None else None
    return [prompts.instruction(kind, sample.sample_id, bbox, "en"), checked.turns[0]]


def record(
    item: Item,
    completion: Completion,
    checked: validate.Checked,
    kind: str,
    language: str,
    turns: list[str],
    generator: str,
) -> dict[str, Any]:
    return {
        "id": item.record_id,
        **annotation(item.row),
        "kind": kind,
        "language": language,
        "conversations": conversation(turns),
        "generator": generator,
        "prompt_version": item.request.prompt_version,
        "request_sha256": item.request.key,
        "label_mentioned": checked.label_mentioned,
        "confidence": completion.mean_prob,
        "source_record_id": item.row["id"] if language == "zh" else None,  # type: ignore[index]
    }


def dataset_of(row: Input) -> str:
    return row.dataset if isinstance(row, Sample) else row["dataset"]


def quarantine_row(row: Input, source: str, step: str, reason: Reason | str, detail: str) -> dict[str, Any]:
    return {
        "dataset": dataset_of(row),
        "source_path": source,
        "step": step,
        "reason": reason,
        "detail": detail,
    }


class _Writers:
    """Generated and quarantine tables, both written atomically (renamed into place on success)."""

    def __init__(self, stack: contextlib.ExitStack, generated: Path, quarantine: Path):
        self.gen = pq.ParquetWriter(stack.enter_context(atomic_path(generated)), GENERATED_SCHEMA)
        stack.callback(self.gen.close)
        self.quar = pq.ParquetWriter(stack.enter_context(atomic_path(quarantine)), QUARANTINE_SCHEMA)
        stack.callback(self.quar.close)

    def write(self, records: list[dict[str, Any]], quarantined: list[dict[str, Any]]) -> None:
        if records:
            self.gen.write_table(pa.Table.from_pylist(records, schema=GENERATED_SCHEMA))
        if quarantined:
            self.quar.write_table(pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA))


def _held_back(row: Input, backend: Backend, allowed: dict[str, bool]) -> bool:
    """A source may go to a non-local endpoint only if its catalog entry sets external_llm_allowed."""
    return not backend.is_local and not allowed.get(dataset_of(row), False)


def _run_partition(
    asset: str,
    partition: str,
    layout: OutputLayout,
    cfg: LLMConfig,
    backend: Backend,
    allowed: dict[str, bool],
    rows: Iterator[Input],
    prepare: Callable[[Any, set[str]], tuple[Item | None, tuple[str, Reason, str] | None]],
    finish: Callable[[Item, Completion, validate.Checked], dict[str, Any]],
    step: str,
    max_samples: int = 3,
    log: Callable[[str], None] | None = None,
) -> Report:
    report = Report(partition, asset, backend.name, backend.model)
    progress = Progress(log or (lambda _: None), None, f"{asset} {partition}", unit="samples")
    cache = ResponseCache(layout.llm_cache, log=log)
    runner = Runner(backend, cache, report)
    seen: set[str] = set()
    pending = 0
    with contextlib.ExitStack() as stack:
        stack.callback(cache.close)
        writers = _Writers(
            stack, layout.generated(asset, partition), layout.generation_quarantine(asset, partition)
        )
        for chunk in batched(rows, cfg.chunk_size):
            items: list[Item] = []
            bad: list[dict[str, Any]] = []
            for row in chunk:
                report.inputs += 1
                source = input_name(row)
                if _held_back(row, backend, allowed):
                    report.held_back += 1
                    detail = (
                        f"source '{dataset_of(row)}' does not set external_llm_allowed; endpoint is not local"
                    )
                    bad.append(quarantine_row(row, source, step, HELD_BACK, detail))
                    continue
                item, problem = prepare(row, seen)
                if item is None:
                    bad.append(quarantine_row(row, source, step, *problem[1:]))
                else:
                    items.append(item)
            try:
                accepted, failed = run_items(items, runner)
            except BatchPending:
                pending += (
                    1  # submitted (or still running): keep submitting the other chunks, collect next run
                )
                continue
            records = [finish(it, c, chk) for it, c, chk in accepted]
            for it, reason, detail in failed:
                bad.append(quarantine_row(it.row, input_name(it.row), step, reason, detail))
            writers.write(records, bad)
            report.generated += len(records)
            report.quarantined += len(bad)
            report.failures.update(q["reason"] for q in bad)
            report.by_kind.update(r["kind"] for r in records)
            report.label_mentioned += sum(bool(r["label_mentioned"]) for r in records)
            report.samples += records[: max(0, max_samples - len(report.samples))]
            progress.update(len(chunk))
        progress.done()
        if pending:  # raising here discards both half-written tables (atomic paths)
            raise BatchPending(
                f"{asset} {partition}: {pending} chunk(s) wait on batches; re-run to collect them"
            )
    return report


def generate_partition(
    asset: str,
    partition: str,
    layout: OutputLayout,
    cfg: LLMConfig,
    backend: Backend,
    allowed: dict[str, bool],
    log: Callable[[str], None] | None = None,
) -> Report:
    """`captions` (caption / region_caption by bbox) or `vqa` for one shard of `decontaminated`."""
    if asset not in GROUPS:
        raise ValueError(f"unknown generation asset '{asset}'")
    generator = f"{backend.name}:{backend.model}"

    def prepare(sample: Sample, seen: set[str]) -> tuple[Item | None, tuple[str, Reason, str] | None]:
        task = "vqa" if asset == "vqa" else ("region_caption" if sample.bbox is not None else "caption")
        rid = record_id(sample, task, seen)
        if rid is None:
            return None, (task, Reason.DUPLICATE_ANNOTATION, f"{sample.image}: same box and label twice")
        path = layout.root / sample.image
        if not path.is_file():
            return None, (task, Reason.IMAGE_MISSING, f"{sample.image} not found under the output root")
        try:
            image = ImageRef.from_file(path)
        except ValueError as exc:
            return None, (task, Reason.IMAGE_UNSUPPORTED, str(exc))
        return Item(sample, rid, generation_request(task, sample, image, cfg, backend.model)), None

    def finish(item: Item, completion: Completion, checked: validate.Checked) -> dict[str, Any]:
        kind = item.request.task
        turns = english_turns(kind, item.row, checked)  # type: ignore[arg-type]
        return record(item, completion, checked, kind, "en", turns, generator)

    return _run_partition(
        asset,
        partition,
        layout,
        cfg,
        backend,
        allowed,
        partition_rows(layout, partition),
        prepare,
        finish,
        f"generate_{asset}",
        log=log,
    )


def english_records(
    layout: OutputLayout, partition: str, columns: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The English records of captions and vqa for this partition (both must have run)."""
    for asset in GROUPS:
        path = layout.generated(asset, partition)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: materialize `{asset}` for partition {partition} first"
            )
        for batch in iter_row_groups(path, columns, 4096):
            yield from (r for r in batch.to_pylist() if r["language"] == "en")


def translation_inputs(layout: OutputLayout, partition: str, fraction: float) -> Iterator[dict[str, Any]]:
    return (r for r in english_records(layout, partition) if selected(r["id"], fraction))


def translate_partition(
    partition: str,
    layout: OutputLayout,
    cfg: LLMConfig,
    backend: Backend,
    allowed: dict[str, bool],
    log: Callable[[str], None] | None = None,
) -> Report:
    """Chinese versions of a deterministic ~`translate_fraction` of this partition's English records."""
    generator = f"{backend.name}:{backend.model}"

    def prepare(row: dict[str, Any], seen: set[str]) -> tuple[Item | None, tuple[str, Reason, str] | None]:
        turns = [t["value"] for t in json.loads(row["conversations"])]
        turns[0] = turns[0].removeprefix("<image>\n")
        fields = annotation_fields(row) | {"kind": row["kind"], "turns": turns}
        version, text = prompts.render(
            "translate",
            {
                "label": row["label"],
                "n_turns": len(turns),
                "turns": json.dumps(turns, ensure_ascii=False, indent=1),
            },
        )
        request = GenRequest(
            "translate", backend.model, version, text, cfg.params() | {"image_detail": None}, fields=fields
        )
        return Item(row, f"{row['id']}#zh", request), None

    def finish(item: Item, completion: Completion, checked: validate.Checked) -> dict[str, Any]:
        return record(item, completion, checked, item.row["kind"], "zh", checked.turns, generator)

    rows = translation_inputs(layout, partition, cfg.translate_fraction)
    return _run_partition(
        "translations", partition, layout, cfg, backend, allowed, rows, prepare, finish, "translate", log=log
    )


def count_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def accounted(layout: OutputLayout, asset: str, partition: str, cfg: LLMConfig) -> tuple[int, int, int]:
    """(inputs, generated, quarantined) recounted from the files on disk: the asset check's evidence."""
    if asset == "translations":
        english = english_records(layout, partition, columns=["id", "language"])
        inputs = sum(1 for r in english if selected(r["id"], cfg.translate_fraction))
    else:
        inputs = count_partition_rows(layout, partition)
    return (
        inputs,
        count_rows(layout.generated(asset, partition)),
        count_rows(layout.generation_quarantine(asset, partition)),
    )
