"""`source/<name>`: one asset per catalog entry, each with its own page; materializing scans the raw folder.

All `source/*` assets are computed by one subsettable multi-asset step: with the full catalog and K
datasets downloaded (the normal case), the absent ones cost a `stat` each instead of a process launch
each (~2 s apiece with the multiprocess executor), and their `normalized/*` steps are skipped without
being launched. Present folders are scanned on a thread pool (MD5 and file reads release the GIL);
every Dagster call stays on the step's own thread.

Policy (README, "Partial downloads and failing datasets"):
- absent folder: listed (folder and download URL) in one log event of the run and in annotations'
  metadata; nothing is materialized, so `normalized/<name>` is skipped. Not a failure, unless no selected
  dataset is present at all (a step that found nothing stops, with the folders and URLs).
- present folder whose scan raises or holds no file: a failure record (`gmai_pipeline.availability`),
  an observation with the error, nothing materialized. The run fails at annotations'
  `present_datasets_in_release` check once the rest is built, or here when `annotations` is not in
  the run (nothing downstream would carry the failure to a step that names it).
"""

import os
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from gmai_pipeline.availability import clear_failure, is_present, record_failure
from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog, catalog_metadata, group_name, md_table, release_in_run
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.manifest import (
    MANIFEST_SCHEMA,
    MissingDataError,
    fingerprint,
    is_input_refusal,
    missing_data_message,
    scan,
)
from gmai_pipeline.normalize import shown_names
from gmai_pipeline.progress import Progress
from gmai_pipeline.storage import OutputLayout, write_table

SCAN_THREADS = min(8, os.cpu_count() or 1)


def source_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["source", name])


def _description(source: SourceDataset) -> str:
    where = source.url or "no public URL is recorded; see provenance"
    return (
        f"**{source.title}** ({source.modality}, {source.department}, {source.task_type}, {source.clinical_task}).\n\n"
        f"Download from {where} under licence `{source.license}`, and unpack into "
        f"`$GMAI_RAW_ROOT/{source.name}/` (layout read by the `{source.reader.kind}` reader). "
        f"Until then the dataset is absent: listed with this URL in the run's log and in `annotations`' "
        f"metadata, not a failure.\n\n"
        f"Metadata from: {source.provenance.source}."
    )


def source_spec(source: SourceDataset) -> dg.AssetSpec:
    kinds = {
        "parquet",
        "dicom" if source.reader.kind == "dicom" else ("nifti" if source.dim == "3d" else "image"),
    }
    return dg.AssetSpec(
        key=source_key(source.name),
        group_name=group_name(source),
        description=_description(source),
        metadata=catalog_metadata(source),
        kinds=kinds,
        tags={"dataset": source.name, "demo": str(source.demo).lower()},
        skippable=True,  # absent or failed: no materialization, and normalized/<name> is skipped
    )


class EmptyFolderError(RuntimeError):
    """A dataset folder that exists but holds no file: an unfinished download or unpack."""


def scan_source(
    source: SourceDataset, raw_root: Path, out: OutputLayout, log: Callable[[str], None]
) -> list[dict]:
    """Scan one present raw folder and write its manifest; plain Python, safe on a worker thread."""
    folder = raw_root / source.name
    if source.demo:
        # Cheap when the folder is complete; rebuilds it when the demo generator's version changed.
        from gmai_pipeline.demo import ensure_demo_source

        ensure_demo_source(source.name, raw_root)
    progress = Progress(log, total=None, label=f"source/{source.name}: hashing", unit="files")
    # Shown names: identifying DICOM folder and file names are masked here already.
    rows = scan(folder, progress=progress, shown=shown_names(source))
    progress.done()
    if not rows:
        raise EmptyFolderError(
            f"{folder} exists but holds no file: unpack '{source.title}' "
            f"(from {source.url or 'see the catalog provenance'}) into it, or remove the empty folder"
        )
    write_table(out.manifest(source.name), pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
    return rows


def _manifest_metadata(rows: list[dict]) -> dict[str, object]:
    df = pd.DataFrame(rows, columns=[f.name for f in MANIFEST_SCHEMA])
    listed = df[df["refused"].notna()]  # refused inputs, and hidden files or aliases listed but not inputs
    refused = int(sum(is_input_refusal(r) for r in listed["refused"]))
    return {
        "status": "present",
        "file_count": len(rows) - len(listed),
        "refused_count": refused,
        "skipped_count": len(listed) - refused,
        "bytes": int(df["size"].sum()) if len(df) else 0,
        "fingerprint": fingerprint(rows),
        "preview": md_table(df, 10),
        "refused": md_table(listed) if len(listed) else "none",
    }


def _drain(lines: queue.SimpleQueue, log: Callable[[str], None]) -> None:
    while True:
        try:
            log(lines.get_nowait())
        except queue.Empty:
            return


def build_sources_asset(sources: list[SourceDataset], name: str = "sources") -> dg.AssetsDefinition:
    """One step for every selected `source/*` asset (select any subset: the sensor asks for one)."""
    by_key = {source_key(s.name): s for s in sources}

    @dg.multi_asset(
        name=name,
        specs=[source_spec(s) for s in sources],
        can_subset=True,
        description="Scans the selected datasets' raw folders under $GMAI_RAW_ROOT into manifests; absent "
        "folders are reported (with the download URL), not failures.",
    )
    def _sources(
        context: dg.AssetExecutionContext, storage: PipelineStorage
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        raw_root = storage.raw
        out = storage.layout()
        selected = [by_key[k] for k in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string())]
        present = [s for s in selected if s.demo or is_present(raw_root, s.name)]
        present_names = {s.name for s in present}
        absent = [s for s in selected if s.name not in present_names]
        for s in absent:
            clear_failure(out, s.name)  # absent now, not failed: an old record no longer applies
        # No event per absent dataset: each costs a write to the instance, and 200 of them would dominate
        # the run; the log line below and annotations' metadata list them, the asset page says how to fix it.
        if absent:  # one event for all of them: the log stays readable and 200 absent datasets cost one write
            context.log.info(
                f"{len(absent)} of {len(selected)} selected datasets are absent under {raw_root} "
                "(not failures; download one and unpack it into its folder to include it):\n"
                + "\n".join(
                    f"  source/{s.name}: absent; download {s.url or '(no URL known)'} -> {raw_root / s.name}/"
                    for s in absent
                )
            )

        failed: list[str] = []
        materialized = 0
        lines: queue.SimpleQueue = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=SCAN_THREADS, thread_name_prefix="scan") as pool:
            futures: dict[Future, SourceDataset] = {
                pool.submit(scan_source, s, raw_root, out, lines.put): s for s in present
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                _drain(lines, context.log.info)
                for future in sorted(done, key=lambda f: futures[f].name):
                    s = futures[future]
                    folder = raw_root / s.name
                    exc = future.exception()
                    if exc is not None:
                        message = (
                            str(exc)
                            if isinstance(exc, EmptyFolderError)
                            else f"scanning {folder} failed: {type(exc).__name__}: {exc}"
                        )
                        failed.append(record_failure(out, s.name, "source", message).line())
                        context.log.error(f"source/{s.name}: {message}")
                        yield dg.AssetObservation(
                            asset_key=source_key(s.name),
                            metadata={"status": "failed", "folder": str(folder), "error": message},
                        )
                        continue
                    rows = future.result()
                    clear_failure(out, s.name, stage="source")
                    for r in rows:
                        if is_input_refusal(r["refused"]):
                            context.log.warning(f"{s.name}: {r['path']}: {r['refused']}")
                    skipped = sum(1 for r in rows if r["refused"] and not is_input_refusal(r["refused"]))
                    if skipped:
                        context.log.info(
                            f"{s.name}: {skipped} hidden file(s) or alias(es) listed, not inputs"
                        )
                    materialized += 1
                    yield dg.MaterializeResult(
                        asset_key=source_key(s.name), metadata=_manifest_metadata(rows)
                    )
        _drain(lines, context.log.info)

        if not materialized and not failed:
            shown = "\n".join(missing_data_message(s, raw_root / s.name) for s in absent[:10])
            more = f"\n... and {len(absent) - 10} more" if len(absent) > 10 else ""
            raise MissingDataError(
                f"none of the {len(selected)} selected datasets is present under {raw_root}:\n{shown}{more}"
            )
        if failed and (not materialized or not release_in_run(context)):
            # Nothing downstream in this run would name them (annotations is not in it, or has no input left).
            raise dg.Failure(
                description=f"{len(failed)} present dataset(s) could not be scanned:\n" + "\n".join(failed)
            )

    return _sources


def build_source_asset(source: SourceDataset) -> dg.AssetsDefinition:
    """`source/<name>` alone (step `source__<name>`): for tests and for composing a one-dataset graph."""
    return build_sources_asset([source], name=source_key(source.name).to_python_identifier())


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(assets=[build_sources_asset(sources)] if sources else [])


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(catalog())
