"""`source/<name>`: one asset per catalog entry; materializing it scans the raw folder into a manifest."""

import dagster as dg
import pandas as pd
import pyarrow as pa

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog_metadata, group_name, layout, md_table
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
from gmai_pipeline.settings import get_settings
from gmai_pipeline.storage import write_table


def source_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["source", name])


def _description(source: SourceDataset) -> str:
    where = source.url or "no public URL is recorded; see provenance"
    return (
        f"**{source.title}** ({source.modality}, {source.department}, {source.task_type}, {source.clinical_task}).\n\n"
        f"Download from {where} under licence `{source.license}`, and unpack into "
        f"`$GMAI_RAW_ROOT/{source.name}/` (layout read by the `{source.reader.kind}` reader).\n\n"
        f"Metadata from: {source.provenance.source}."
    )


def build_source_asset(source: SourceDataset) -> dg.AssetsDefinition:
    kinds = {
        "parquet",
        "dicom" if source.reader.kind == "dicom" else ("nifti" if source.dim == "3d" else "image"),
    }

    @dg.asset(
        key=source_key(source.name),
        group_name=group_name(source),
        description=_description(source),
        metadata=catalog_metadata(source),
        kinds=kinds,
        tags={"dataset": source.name, "demo": str(source.demo).lower()},
    )
    def _source(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        settings = get_settings()
        folder = settings.raw_root / source.name
        if source.demo:
            # Cheap when the folder is complete; rebuilds it when the demo generator's version changed.
            from gmai_pipeline.demo import ensure_demo_source

            ensure_demo_source(source.name, settings.raw_root)
        if not folder.is_dir():
            raise MissingDataError(missing_data_message(source, folder))
        progress = Progress(
            context.log.info, total=None, label=f"source/{source.name}: hashing", unit="files"
        )
        # Shown names: a DICOM dataset's identifying folder and file names are masked here already.
        rows = scan(folder, progress=progress, shown=shown_names(source))
        progress.done()
        refused = [r for r in rows if is_input_refusal(r["refused"])]
        skipped = [r for r in rows if r["refused"] and not is_input_refusal(r["refused"])]
        for r in refused:
            context.log.warning(f"{source.name}: {r['path']}: {r['refused']}")
        if skipped:
            context.log.info(f"{source.name}: {len(skipped)} hidden file(s) or alias(es) listed, not inputs")
        write_table(layout().manifest(source.name), pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        df = pd.DataFrame(rows, columns=[f.name for f in MANIFEST_SCHEMA])
        return dg.MaterializeResult(
            metadata={
                "file_count": len(rows) - len(refused) - len(skipped),
                "refused_count": len(refused),
                "skipped_count": len(skipped),
                "bytes": int(df["size"].sum()) if len(df) else 0,
                "fingerprint": fingerprint(rows),
                "preview": md_table(df, 10),
                "refused": md_table(df[df["refused"].notna()]) if refused or skipped else "none",
            }
        )

    return _source


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(assets=[build_source_asset(s) for s in sources])
