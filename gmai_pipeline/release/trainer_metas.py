"""Trainer metas: the files InternVL, XTuner (GMAI-VL's fork) and LLaVA read, in the form each reads them.

How each tool reads them (the tests re-implement these lines and run them on a release):

- InternVL, `OpenGVLab/InternVL:internvl_chat/internvl/train/internvl_chat_finetune.py` (`build_datasets`,
  `LazySupervisedDataset`): `--meta_path` is a JSON object `{name: {root, annotation, data_augment,
  repeat_time, length}}` (examples: `internvl_chat/shell/data/*.json`). `annotation` must end in `jsonl`;
  its lines are read as they are, `repeat_time` below 1 keeps the first `int(lines * repeat_time)`, an
  integer above 1 repeats the list (a fraction above 1 is refused); the image is
  `os.path.join(root, record["image"])`; `data_augment` switches training-time augmentation.
- XTuner lite as GMAI-VL uses it, `uni-medical/GMAI-VL:README.md` ("Data Preparation",
  `examples/example_list.json`) and `xtuner/_lite/datasets/load.py`, `llava.py`: `--datasets` is a JSON
  object `{name: {image_dir, annotations, sample_ratio, length, data_augment}}`; `annotations` is read by
  its suffix (`.json` array or `.jsonl`), the image is `os.path.join(image_dir, record["image"])`.
  GMAI-VL's fork applies `sample_ratio` only to Hub datasets; later XTuner lite
  (`InternLM/xtuner:xtuner/_lite/datasets/jsonl.py`) repeats `int(ratio)` times and samples the rest at
  random.
- LLaVA, `haotian-liu/LLaVA:llava/train/train.py` (`LazySupervisedDataset`): `--data_path` is one JSON
  array (`json.load`), the image is `os.path.join(--image_folder, record["image"])`.

Every path in a meta is relative to the release folder, so the folder can move as a whole; the tools
resolve relative paths against their working directory, so run them from the release folder, or make
the paths absolute for a copy with `python -m gmai_pipeline.release.trainer_metas RELEASE_DIR`.

Stage metas keep each mixture component's ratio in the tool's own field. A component's file holds its
records once each (after the stage's filter), those the mixture's sampling gave an extra copy first: so
InternVL's `repeat_time` (whole repeats, plus an entry keeping the first part of the file for the
fraction) trains on exactly the mixture's samples, and XTuner gets the configured `sample_ratio`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gmai_pipeline.release.annotations import (
    ANNOTATIONS_DIR,
    DATA_AUGMENT,
    LLAVA_JSON,
    write_json_array,
    write_jsonl,
)
from gmai_pipeline.release.images import IMAGES_DIR
from gmai_pipeline.release.mixtures import Mixture
from gmai_pipeline.storage import atomic_write_text

INTERNVL_META = "internvl_meta.json"
XTUNER_META = "xtuner_meta.json"
MIXTURES_DIR = "mixtures"
# Path fields of each tool's meta entries (what `relocate` rewrites).
PATH_KEYS = {"internvl": ("root", "annotation"), "xtuner": ("image_dir", "annotations")}
# The release's folders a meta path can start with (what `relocate` looks for in an absolute path).
TOP_LEVEL = (IMAGES_DIR, ANNOTATIONS_DIR, MIXTURES_DIR)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def internvl_entry(root: str, annotation: str, length: int, repeat_time: int | float) -> dict[str, Any]:
    if not annotation.endswith("jsonl"):
        raise ValueError(f"InternVL reads only .jsonl annotations, not {annotation}")
    if repeat_time > 1 and not isinstance(repeat_time, int):
        raise ValueError(f"InternVL needs an integer repeat_time above 1, not {repeat_time}")
    return {
        "root": root,
        "annotation": annotation,
        "data_augment": DATA_AUGMENT,
        "repeat_time": repeat_time,
        "length": length,
    }


def xtuner_entry(image_dir: str, annotations: str, length: int, sample_ratio: float) -> dict[str, Any]:
    return {
        "image_dir": image_dir,
        "annotations": annotations,
        "sample_ratio": sample_ratio,
        "length": length,
        "data_augment": DATA_AUGMENT,
    }


def write_json(path: Path, meta: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


# --- the whole release ----------------------------------------------------------------------------------


def write_release_metas(release_dir: Path, subsets: dict[str, int]) -> dict[str, Path]:
    """InternVL and XTuner metas over the subset files (`annotations/<name>.jsonl`); empty subsets left out.

    Returns tool -> meta path.
    """
    present = {name: n for name, n in subsets.items() if n}
    if not present:
        raise ValueError(f"{release_dir}: no released records, no trainer meta to write")
    internvl = {
        name: internvl_entry(IMAGES_DIR, f"{ANNOTATIONS_DIR}/{name}.jsonl", n, 1)
        for name, n in present.items()
    }
    xtuner = {
        name: xtuner_entry(IMAGES_DIR, f"{ANNOTATIONS_DIR}/{name}.jsonl", n, 1.0)
        for name, n in present.items()
    }
    return {
        "internvl": write_json(release_dir / INTERNVL_META, internvl),
        "xtuner": write_json(release_dir / XTUNER_META, xtuner),
    }


# --- stage mixtures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageComponent:
    name: str
    records: list[dict[str, Any]]  # each once; those sampled an extra copy first
    sample_ratio: float
    repeats: int  # copies every record gets
    extra: int  # the first `extra` records get one copy more

    @property
    def lines(self) -> int:
        return len(self.records)

    @property
    def samples(self) -> int:
        return self.repeats * len(self.records) + self.extra


@dataclass(frozen=True)
class ComponentFile:
    """A component file already written (by the streaming writer, `gmai_pipeline.release.stage_mix`)."""

    name: str
    lines: int  # records in the file, each once; those sampled an extra copy first
    sample_ratio: float
    repeats: int
    extra: int

    @property
    def samples(self) -> int:
        return self.repeats * self.lines + self.extra


def stage_components(mixture: Mixture) -> list[StageComponent]:
    """Each component's records ordered for the tools' prefix sampling, from what the mixture chose.

    The mixture samples `floor(ratio)` copies of every record plus one more for some; anything else
    (a sampling rule these metas cannot express) is an error, not a quietly different stage.
    """
    out = []
    for name, candidates in mixture.candidates.items():
        if not _NAME.match(name):
            raise ValueError(f"{mixture.stage}: component name {name!r} cannot name a file")
        where = f"{mixture.stage}/{name}"
        chosen = Counter(r["id"] for r in mixture.chosen[name])
        seen = Counter(r["id"] for r in candidates)  # a dialogue given twice is a candidate twice
        if set(chosen) - set(seen):
            raise ValueError(f"{where}: sampled records that are not candidates")
        copies = {}
        for record_id, n in seen.items():
            copies[record_id], rest = divmod(chosen[record_id], n)
            if rest:
                raise ValueError(f"{where}: copies of {record_id} differ between its occurrences")
        repeats = min(copies.values(), default=0)
        if any(c > repeats + 1 for c in copies.values()):
            raise ValueError(f"{where}: sampling is not whole copies plus one more for some")
        extra = [r for r in candidates if copies[r["id"]] > repeats]
        rest = [r for r in candidates if copies[r["id"]] == repeats]
        ratio = mixture.components[name]["sample_ratio"]
        out.append(StageComponent(name, extra + rest, ratio, repeats, len(extra)))
    return out


def internvl_fraction(keep: int, lines: int) -> float:
    """The repeat_time below 1 for which InternVL keeps exactly `keep` of `lines` (`int(lines * rt)`)."""
    rt = keep / lines
    return rt if int(lines * rt) == keep else (keep + 0.5) / lines


def stage_internvl(
    stage: str, comps: list[StageComponent] | list[ComponentFile], files: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for c in comps:
        n = c.lines
        if c.repeats:
            meta[f"{stage}-{c.name}"] = internvl_entry(IMAGES_DIR, files[c.name], n, c.repeats)
        if c.extra:
            key = f"{stage}-{c.name}" + ("-extra" if c.repeats else "")
            meta[key] = internvl_entry(IMAGES_DIR, files[c.name], n, internvl_fraction(c.extra, n))
    return meta


def stage_xtuner(
    stage: str, comps: list[StageComponent] | list[ComponentFile], files: dict[str, str]
) -> dict[str, Any]:
    return {
        f"{stage}-{c.name}": xtuner_entry(IMAGES_DIR, files[c.name], c.lines, c.sample_ratio)
        for c in comps
        if c.samples
    }


def write_stage_metas(mixture: Mixture, release_dir: Path) -> dict[str, Path]:
    """`mixtures/<stage>/<component>.jsonl` and the stage's InternVL, XTuner and LLaVA files.

    The LLaVA array holds the mixture's samples as they are (LLaVA has no ratio field). Returns file kind -> path.
    """
    stage = mixture.stage
    comps = [c for c in stage_components(mixture) if c.samples]
    if not comps:
        raise ValueError(f"{stage}: the mixture has no samples; check its components in the mixtures file")
    out_dir = release_dir / MIXTURES_DIR
    comp_dir = out_dir / stage
    comp_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for c in comps:
        write_jsonl(comp_dir / f"{c.name}.jsonl", c.records)
        files[c.name] = f"{MIXTURES_DIR}/{stage}/{c.name}.jsonl"
    for stale in comp_dir.glob("*.jsonl"):
        if stale.stem not in files:
            stale.unlink()
    (out_dir / f"{stage}.meta.json").unlink(missing_ok=True)  # earlier versions' name of the provenance
    paths = {
        "internvl_meta": write_json(
            out_dir / f"{stage}.{INTERNVL_META}", stage_internvl(stage, comps, files)
        ),
        "xtuner_meta": write_json(out_dir / f"{stage}.{XTUNER_META}", stage_xtuner(stage, comps, files)),
        "llava_json": out_dir / f"{stage}.{LLAVA_JSON}",
    }
    write_json_array(paths["llava_json"], mixture.records)
    return paths


# --- moving a release -----------------------------------------------------------------------------------


def meta_files(release_dir: Path) -> list[tuple[str, Path]]:
    """(tool, path) of every trainer meta in a release folder: the release's and each stage's."""
    out = []
    for tool, name in (("internvl", INTERNVL_META), ("xtuner", XTUNER_META)):
        candidates = [release_dir / name, *sorted((release_dir / MIXTURES_DIR).glob(f"*.{name}"))]
        out += [(tool, p) for p in candidates if p.is_file()]
    return out


def release_relative(path: str, release_dir: Path) -> PurePosixPath:
    """A meta path as a path inside the release: relative already, absolute into `release_dir`, or absolute
    into wherever an earlier `relocate` put the folder (found by the release's own top-level folder names:
    the rightmost of them starts the part inside the release)."""
    p = Path(path)
    if not p.is_absolute():
        return PurePosixPath(p.as_posix())
    if p.is_relative_to(release_dir):
        return PurePosixPath(p.relative_to(release_dir).as_posix())
    tops = [i for i, part in enumerate(p.parts) if part in TOP_LEVEL]
    if not tops:
        raise ValueError(f"{path} is not a path inside a release folder ({', '.join(TOP_LEVEL)})")
    return PurePosixPath(*p.parts[tops[-1] :])


def relocate(release_dir: Path, absolute: bool = True) -> list[Path]:
    """Rewrite every meta's paths as absolute paths into `release_dir` (or back to relative ones)."""
    release_dir = Path(release_dir).resolve()
    changed = []
    for tool, path in meta_files(release_dir):
        meta = json.loads(path.read_text())
        for name, entry in meta.items():
            for key in PATH_KEYS[tool]:
                try:
                    rel = release_relative(entry[key], release_dir)
                except ValueError as exc:
                    raise ValueError(f"{path}: {name}.{key}: {exc}") from None
                entry[key] = str(release_dir / rel) if absolute else rel.as_posix()
        write_json(path, meta)
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gmai_pipeline.release.trainer_metas",
        description="Point a release folder's InternVL and XTuner metas at where the folder is now "
        "(absolute paths), so the trainers can run from any working directory.",
    )
    parser.add_argument("release_dir", type=Path)
    parser.add_argument("--relative", action="store_true", help="write paths relative to the folder again")
    args = parser.parse_args(argv)
    for path in relocate(args.release_dir, absolute=not args.relative):
        print(f"rewrote {path}")


if __name__ == "__main__":
    main()
