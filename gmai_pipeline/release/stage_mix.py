"""A stage's mixture files, written by streaming the release-records table (what the `stageN_mix` assets run).

The same files, byte for byte, as `build_mixture` + `write_mixture` + `write_stage_metas` write from rows in
memory (a test compares them), without holding the stage in memory: each component is read twice from the
table (rows of other kinds and languages are skipped in Arrow): once to write its file (`mixtures/<stage>/
<component>.jsonl`, the records sampled an extra copy first) and to count, once more to merge the components
in id order into `<stage>.jsonl` and `<stage>.llava.json`, hashing the ids as they go. Text dialogue (small,
user-supplied files) is read into memory. A model-judged component (stage III) also ranks its candidates by
the stage II model's confidence, which holds one number per candidate.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gmai_pipeline.release.external import load_clean
from gmai_pipeline.release.mixtures import (
    SCORES_SCHEMA,
    Component,
    MixturesConfig,
    StaleScoresError,
    component_rows,
    copies,
    provenance_path,
    ranking,
    read_text_dialogue,
    resolve,
    verdict,
)
from gmai_pipeline.release.records import ReleaseRow
from gmai_pipeline.release.trainer_metas import (
    _NAME,
    INTERNVL_META,
    LLAVA_JSON,
    MIXTURES_DIR,
    XTUNER_META,
    ComponentFile,
    stage_internvl,
    stage_xtuner,
    write_json,
)
from gmai_pipeline.storage import atomic_path, atomic_write_text


@dataclass
class StageMix:
    """What was written: the provenance record (as `write_mixture` returns it) and the tools' files."""

    meta: dict[str, Any]
    tools: dict[str, Path]
    rejected: list[dict[str, str]] = field(default_factory=list)  # text dialogue records not used


class _Source:
    """One component's candidates, re-readable: (record, drop reason or None, SCORES_SCHEMA row or None)."""

    def __init__(
        self,
        stage: str,
        name: str,
        comp: Component,
        rows: Iterable[ReleaseRow],
        scores: Mapping[str, dict] | None,
        text: list[dict[str, Any]] | None = None,
    ):
        self.stage, self.name, self.comp = stage, name, comp
        self.rows, self.scores, self.text = rows, scores, text
        self.rule = comp.filter.model_confidence if comp.filter else None
        self.rank: dict[str, int] = {}
        if self.rule is not None:
            if scores is None:
                raise StaleScoresError(
                    f"{stage}/{name} is judged by the previous stage's model: materialize stage3_scores first"
                )
            self.rank = ranking(
                stage, name, (r.record for r, why in component_rows(rows, comp) if not why), scores
            )

    def __iter__(self) -> Iterator[tuple[dict[str, Any], str | None, dict[str, Any] | None]]:
        if self.text is not None:
            for record in self.text:
                yield record, None, None
            return
        for row, why in component_rows(self.rows, self.comp):
            if why or self.rule is None:
                yield row.record, why, None
            else:
                reason, table_row = verdict(
                    self.stage, self.name, self.rule, row.record, self.scores, self.rank
                )
                yield row.record, reason, table_row


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


def _write_component(path: Path, source: _Source, ratio: float, seed: str, scores_out) -> dict[str, Any]:
    """The component's file (records sampled an extra copy first, then the rest, each in candidate order) and
    its counts; the judged candidates' score rows go to `scores_out`."""
    whole = math.floor(ratio)
    counts = {"considered": 0, "candidates": 0, "extra": 0, "samples": 0}
    dropped: Counter[str] = Counter()
    rest_path = path.with_name(f".{path.name}.rest")
    with (
        atomic_path(path) as tmp,
        open(tmp, "w", encoding="utf-8") as extra,
        open(rest_path, "w+", encoding="utf-8") as rest,
    ):
        for record, reason, table_row in source:
            counts["considered"] += 1
            if table_row is not None:
                scores_out(table_row)
            if reason:
                dropped[reason] += 1
                continue
            n = copies(record["id"], ratio, seed)
            counts["candidates"] += 1
            counts["samples"] += n
            if n > whole:
                counts["extra"] += 1
                extra.write(_line(record) + "\n")
            else:
                rest.write(_line(record) + "\n")
        rest.seek(0)
        shutil.copyfileobj(rest, extra)
    rest_path.unlink()
    counts["dropped"] = dict(sorted(dropped.items()))
    n, extra_n = counts["candidates"], counts["extra"]
    # Every record got the extra copy: it is a whole copy more for all (what stage_components finds too).
    counts["repeats"], counts["extra"] = (whole + 1, 0) if n and extra_n == n else (whole, extra_n)
    return counts


def _repeated(source: _Source, ratio: float, seed: str) -> Iterator[dict[str, Any]]:
    """The component's sampled records in id order, each as many times as it is sampled."""
    last = None
    for record, reason, _ in source:
        if reason:
            continue
        if last is not None and record["id"] < last:
            raise ValueError(
                f"{source.stage}/{source.name}: rows are not sorted by id ({record['id']!r} after {last!r})"
            )
        last = record["id"]
        for _ in range(copies(record["id"], ratio, seed)):
            yield record


def write_stage_mixture(
    stage: str,
    rows: Iterable[ReleaseRow],
    config: MixturesConfig,
    config_path: Path,
    out_dir: Path,
    release_dir: Path,
    image_root: Path,
    text_files: list[Path] | None = None,
    scores: Mapping[str, dict] | None = None,
    external_dir: Path | None = None,
) -> StageMix:
    """Write the stage's mixture (`<stage>.jsonl`, provenance, scores table) and its trainer metas from `rows`,
    which must be sorted by id and readable more than once (`ReleaseRecords`, or a list). External corpora
    are read decontaminated from `external_dir` (`release.external`)."""
    spec = config.stages[stage]
    out_dir.mkdir(parents=True, exist_ok=True)
    metas_dir = release_dir / MIXTURES_DIR
    comp_dir = metas_dir / stage
    comp_dir.mkdir(parents=True, exist_ok=True)
    components: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, str]] = []
    streams: list[Iterator[dict[str, Any]]] = []
    files: dict[str, str] = {}
    comps: list[ComponentFile] = []
    scores_path = out_dir / f"{stage}.scores.parquet"
    score_rows: list[dict[str, Any]] = []
    with atomic_path(scores_path) as scores_tmp, pq.ParquetWriter(scores_tmp, SCORES_SCHEMA) as scores_writer:
        judged_rows = 0

        def score_out(row: dict[str, Any]) -> None:
            nonlocal judged_rows
            score_rows.append(row)
            judged_rows += 1
            if len(score_rows) >= 8192:
                scores_writer.write_table(pa.Table.from_pylist(score_rows, schema=SCORES_SCHEMA))
                score_rows.clear()

        for name, comp in spec.components.items():
            if not _NAME.match(name):
                raise ValueError(f"{stage}: component name {name!r} cannot name a file")
            if comp.text_files:
                paths = (
                    text_files
                    if text_files is not None
                    else [resolve(p, config_path) for p in comp.text_files]
                )
                records, bad = read_text_dialogue(paths)
                rejected += bad
                source = _Source(stage, name, comp, rows, scores, text=records)
                merged = _Source(stage, name, comp, rows, scores, text=sorted(records, key=lambda r: r["id"]))
                described: Any = [str(f) for f in paths]
            elif comp.corpus is not None:
                records = load_clean(external_dir, comp.corpus)
                source = _Source(stage, name, comp, rows, scores, text=records)
                merged = _Source(stage, name, comp, rows, scores, text=sorted(records, key=lambda r: r["id"]))
                described = f"corpus={comp.corpus} (decontaminated)"
            else:
                source = merged = _Source(stage, name, comp, rows, scores)
                described = f"kinds={list(comp.kinds)} languages={list(comp.languages)}"
            counts = _write_component(
                comp_dir / f"{name}.jsonl", source, comp.sample_ratio, config.seed, score_out
            )
            components[name] = {
                "source": described,
                "sample_ratio": comp.sample_ratio,
                "candidates": counts["considered"],
                "dropped": counts["dropped"],
                "samples": counts["samples"],
                "filter": comp.filter.model_dump() if comp.filter else None,
            }
            if counts["samples"]:
                files[name] = f"{MIXTURES_DIR}/{stage}/{name}.jsonl"
                comps.append(
                    ComponentFile(
                        name, counts["candidates"], comp.sample_ratio, counts["repeats"], counts["extra"]
                    )
                )
                streams.append(_repeated(merged, comp.sample_ratio, config.seed))
            else:
                (comp_dir / f"{name}.jsonl").unlink()
        if score_rows:
            scores_writer.write_table(pa.Table.from_pylist(score_rows, schema=SCORES_SCHEMA))
    if not judged_rows:
        scores_path.unlink()  # a stage no longer model-judged must not leave a stale table beside it
    if not comps:
        raise ValueError(f"{stage}: the mixture has no samples; check its components in the mixtures file")
    for stale in comp_dir.glob("*.jsonl"):
        if stale.stem not in files:
            stale.unlink()

    ids = hashlib.sha256()
    samples = 0
    llava_path = metas_dir / f"{stage}.{LLAVA_JSON}"
    with (
        atomic_path(out_dir / f"{stage}.jsonl") as jsonl_tmp,
        open(jsonl_tmp, "w", encoding="utf-8") as jsonl,
        atomic_path(llava_path) as llava_tmp,
        open(llava_tmp, "w", encoding="utf-8") as llava,
    ):
        llava.write("[")
        for record in heapq.merge(*streams, key=lambda r: r["id"]):
            text = _line(record)
            jsonl.write(text + "\n")
            llava.write(("\n" if samples == 0 else ",\n") + text)
            ids.update((("\n" if samples else "") + record["id"]).encode("utf-8"))
            samples += 1
        llava.write("\n]\n" if samples else "]\n")
    meta: dict[str, Any] = {
        "image_root": str(Path(image_root).resolve()),
        "samples": samples,
        "ids_sha256": ids.hexdigest(),
        "components": components,
        "config": str(config_path),
        "rejected": len(rejected),
    }
    if judged_rows:
        meta["scores_table"] = str(scores_path)
    atomic_write_text(provenance_path(out_dir, stage), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    (metas_dir / f"{stage}.meta.json").unlink(missing_ok=True)  # earlier versions' name of the provenance
    tools = {
        "internvl_meta": write_json(
            metas_dir / f"{stage}.{INTERNVL_META}", stage_internvl(stage, comps, files)
        ),
        "xtuner_meta": write_json(metas_dir / f"{stage}.{XTUNER_META}", stage_xtuner(stage, comps, files)),
        "llava_json": llava_path,
    }
    return StageMix(meta, tools, rejected)
