"""Benchmark files -> evaluation question sets: one row per question, its images as files, VLMEvalKit's prompt.

Every benchmark present under `$GMAI_BENCHMARK_ROOT` (found by `gmai_pipeline.benchmarks.locate`) becomes one
or more *datasets*, named as VLMEvalKit names them (`GMAI-MMBench_VAL`, `GMAI-MMBench_TEST` = the 11 TEST
parts, `OmniMedVQA` = `omnimedbench_part_1..14` as `vlmeval/dataset/image_mcq.py::OmniMedVQA.load_data`
concatenates them, `MMMU_DEV_VAL`, `PathVQA_TEST`, `PathVQA_VAL`); layouts VLMEvalKit does not ship get
names of the same shape (`VQA-RAD_TEST`, `SLAKE_TEST`, `PMC-VQA_TEST`). Only evaluation splits are read.

A question set on disk (`write_question_set`): `<dataset>.jsonl` (what the GPU job reads: `index`, `prompt`,
`images`), `<dataset>.rows.tsv` (the benchmark's own columns without images, VLMEvalKit's TSV form: scoring
reads it with pandas exactly as VLMEvalKit reads its TSV, so option cells get the same types), decoded
images under `images/<source>/`, and `index.json` (written last: the set is complete once it exists).

Prompts (built from the pandas-typed rows, as VLMEvalKit builds them from its DataFrame):
- multiple choice: `ImageMCQDataset.build_prompt` (`Hint:`, `Question:`, `Options:` with `A. ...` lines,
  `Please select the correct answer from the options above.`), images before the text; MMMU interleaves
  images where the text says `<image k>` (`MMMUDataset.split_MMMU`: images not named in the text are
  left out);
- short answer (VQA-RAD, SLAKE, PathVQA): `ImageShortQADataset.build_prompt`, the question followed by
  `Please directly provide a short answer to the question.`
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import io
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gmai_pipeline.benchmarks import BenchmarkSource, is_present, locate_all, mmmu, pathvqa, pmc_vqa, vqa_rad
from gmai_pipeline.benchmarks.base import first_existing, iter_parquet_rows, struct_bytes
from gmai_pipeline.benchmarks.vlmevalkit_tsv import BACKREF_MAX, cells, iter_rows, resolve_image_path
from gmai_pipeline.storage import atomic_write_bytes, atomic_write_text

IMAGE_TOKEN = "<image>"
MCQ_SUFFIX = "Please select the correct answer from the options above. \n"
SHORT_SUFFIX = "\nPlease directly provide a short answer to the question. "
OMNI_PARTS = range(1, 15)  # VLMEvalKit's OmniMedVQA.load_data reads parts 1-14 of the 30 it lists
HM_SUBJECTS = {s.lower() for s in mmmu.SUBJECTS}
LETTERS = tuple(string.ascii_uppercase)
INDEX_FILE = "index.json"


@dataclass
class Dataset:
    """One evaluation dataset being collected: rows (benchmark columns, strings) and each row's images."""

    name: str
    benchmark: str
    task: str  # "mcq" | "vqa" (short answers: closed yes/no and open)
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    images: list[list[str]] = field(default_factory=list)  # absolute paths, per row
    sources: list[str] = field(default_factory=list)
    skipped_no_image: int = 0

    def add(self, row: dict[str, str], images: list[str]) -> None:
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)
        self.images.append(images)


def eval_name(tsv_dataset: str) -> str:
    """VLMEvalKit's evaluation dataset for a TSV file's dataset name (TEST parts and OmniMedVQA parts merge)."""
    if re.fullmatch(r"GMAI_mm_bench_TEST_part_\d+", tsv_dataset):
        return "GMAI-MMBench_TEST"
    if re.fullmatch(r"omnimedbench_part_\d+", tsv_dataset):
        return "OmniMedVQA"
    return tsv_dataset


def _safe(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]
    return clean if clean == name else f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".img"


def _write_image(folder: Path, stem: str, data: bytes) -> str:
    path = folder / f"{_safe(stem)}{_ext(data)}"
    if not (path.is_file() and path.stat().st_size == len(data)):
        atomic_write_bytes(path, data)
    return str(path.resolve())


# --- VLMEvalKit TSV -------------------------------------------------------------------------------------


def _is_short_answer(name: str, benchmark: str) -> bool:
    return benchmark in ("VQA-RAD", "SLAKE", "PathVQA") and "PMC" not in name


def read_tsv(
    source: BenchmarkSource, image_dir: Path, datasets: dict[str, Dataset], problems: list[str]
) -> None:
    tsv = source.path
    tsv_name = source.dataset
    if tsv_name.startswith("omnimedbench_part_") and int(tsv_name.rsplit("_", 1)[1]) not in OMNI_PARTS:
        problems.append(f"{tsv}: not evaluated (VLMEvalKit's OmniMedVQA reads parts 1-14 only)")
        return
    name = eval_name(tsv_name)
    task = "vqa" if _is_short_answer(name, source.spec.name) else "mcq"
    ds = datasets.setdefault(name, Dataset(name, source.spec.name, task))
    ds.sources.append(str(tsv))
    folder = image_dir / tsv_name
    files: dict[str, list[str]] = {}  # index -> image files of rows carrying their own images
    pending: list[tuple[int, list[str], int]] = []  # (row position, referenced indices, line)
    hm_filter = name.startswith("MMMU")
    for row in iter_rows(tsv, problems):
        fields = dict(row.fields)
        index = fields.get("index", "").strip()
        if not index:
            problems.append(f"{tsv}: line {row.line}: no index; row skipped")
            continue
        fields["index"] = index
        if hm_filter and not _is_hm(fields):
            continue
        column = "image" if "image" in fields else "image_path"
        raw = cells(fields.pop("image", fields.get("image_path", "")))
        if not raw:
            ds.skipped_no_image += 1  # VLMEvalKit's skip_noimg
            continue
        images: list[str] = []
        refs: list[str] = []
        for k, cell in enumerate(raw):
            if column == "image_path":
                found = resolve_image_path(cell, tsv)
                if found is None:
                    problems.append(
                        f"{tsv}: line {row.line}: image_path {cell!r} not found; question skipped"
                    )
                    images = []
                    break
                images.append(str(found.resolve()))
            elif len(cell) <= BACKREF_MAX:
                refs.append(cell)
            else:
                try:
                    data = base64.b64decode(cell, validate=False)
                except (binascii.Error, ValueError) as exc:
                    problems.append(f"{tsv}: line {row.line}: image is not base64 ({exc}); question skipped")
                    images = []
                    break
                stem = index if len(raw) == 1 else f"{index}_{k}"
                images.append(_write_image(folder, stem, data))
        else:
            if refs:
                pending.append((len(ds.rows), refs, row.line))
            else:
                files[index] = images
            ds.add(fields, images)
    for pos, refs, line in reversed(pending):
        targets = [files.get(r) for r in refs]
        if any(t is None for t in targets):
            problems.append(
                f"{tsv}: line {line}: refers to the image of index {refs}, which is absent; skipped"
            )
            del ds.rows[pos], ds.images[pos]
        else:
            ds.images[pos] = [p for t in targets for p in t]


def _is_hm(fields: dict[str, str]) -> bool:
    """MMMU's Health & Medicine rows (VLMEvalKit's MMMU TSV: `category` = subject); no column: keep."""
    subject = fields.get("category")
    return subject is None or subject.strip().replace(" ", "_").lower() in HM_SUBJECTS


# --- original layouts -----------------------------------------------------------------------------------


def read_omnimedvqa(folder: Path, image_dir: Path, ds: Dataset, problems: list[str]) -> None:
    from gmai_pipeline.benchmarks.omnimedvqa import ACCESS_DIRS

    for access in ACCESS_DIRS:
        for qa_file in sorted((folder / "QA_information" / access).glob("*.json")):
            try:
                items = json.loads(qa_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"{qa_file}: unreadable JSON ({exc})")
                continue
            for item in items if isinstance(items, list) else []:
                qid = str(item.get("question_id", "")).strip()
                image = folder / str(item.get("image_path", "")).strip().lstrip("./")
                options = {
                    k: str(item[f"option_{k}"])
                    for k in "ABCDEFGH"
                    if item.get(f"option_{k}") not in (None, "")
                }
                gt = str(item.get("gt_answer", "")).strip()
                answer = next((k for k, v in options.items() if v.strip().lower() == gt.lower()), None)
                if not qid or not image.is_file() or answer is None:
                    why = "no question_id" if not qid else f"image {image} missing" if not image.is_file() else (
                        f"gt_answer {gt!r} is none of the options")  # fmt: skip
                    problems.append(f"{qa_file}: question {qid or '?'}: {why}; skipped")
                    continue
                row = {"index": qid, "question": str(item.get("question", "")), **options, "answer": answer,
                       "category": str(item.get("question_type", "")),
                       "modality": str(item.get("modality_type", item.get("modality", ""))),
                       "dataset": qa_file.stem, "access": access}  # fmt: skip
                ds.add(row, [str(image.resolve())])


def _closed_open(answer_type: object, answer: str) -> str:
    t = str(answer_type or "").strip().upper()
    if t in ("CLOSED", "OPEN"):
        return t
    return "CLOSED" if answer.strip().lower() in ("yes", "no") else "OPEN"


def read_vqa_rad(folder: Path, image_dir: Path, ds: Dataset, problems: list[str]) -> None:
    image_root = first_existing(*(folder / d for d in vqa_rad.IMAGE_DIRS if d)) or folder
    for path in sorted(folder.glob("*.json")):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: unreadable JSON ({exc})")
            continue
        if not isinstance(items, list) or not items or "image_name" not in items[0]:
            continue
        for item in items:
            if not str(item.get("phrase_type", "")).startswith("test"):
                continue
            image = image_root / str(item.get("image_name", ""))
            if not image.is_file():
                problems.append(f"{path}: question {item.get('qid')}: image {image} missing; skipped")
                continue
            answer = str(item.get("answer", ""))
            ds.add({"index": str(item.get("qid")), "question": str(item.get("question", "")), "answer": answer,
                    "answer_type": _closed_open(item.get("answer_type"), answer),
                    "category": str(item.get("question_type", "")), "phrase_type": str(item.get("phrase_type"))},
                   [str(image.resolve())])  # fmt: skip
    read_hf_vqa(sorted(folder.glob("data/test-*.parquet")), image_dir / "VQA-RAD", ds, problems)


def read_hf_vqa(files: list[Path], image_dir: Path, ds: Dataset, problems: list[str]) -> None:
    """HF `datasets` Parquet (image struct, question, answer): ids `<split>:<row>` as the image reader's."""
    rows: dict[str, int] = {}
    for path in files:
        split = vqa_rad.hf_split(path)
        for rec in iter_parquet_rows(path, ["image", "question", "answer"]):
            index = f"{split}:{rows.get(split, 0)}"
            rows[split] = rows.get(split, 0) + 1
            data = struct_bytes(rec.get("image"))
            if data is None:
                problems.append(f"{path}: row {index}: no image bytes; skipped")
                continue
            answer = str(rec.get("answer", ""))
            ds.add({"index": index, "question": str(rec.get("question", "")), "answer": answer,
                    "answer_type": _closed_open(None, answer)},
                   [_write_image(image_dir, index.replace(":", "_"), data)])  # fmt: skip


def read_slake(folder: Path, image_dir: Path, ds: Dataset, problems: list[str], languages=("en",)) -> None:
    test_json = first_existing(folder / "test.json", folder / "Slake1.0" / "test.json")
    if test_json is None:
        return
    try:
        items = json.loads(test_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{test_json}: unreadable JSON ({exc})")
        return
    for item in items:
        if str(item.get("q_lang", "en")) not in languages:
            continue
        image = test_json.parent / "imgs" / str(item.get("img_name", ""))
        if not image.is_file():
            problems.append(f"{test_json}: question {item.get('qid')}: image {image} missing; skipped")
            continue
        answer = str(item.get("answer", ""))
        ds.add({"index": str(item.get("qid")), "question": str(item.get("question", "")), "answer": answer,
                "answer_type": _closed_open(item.get("answer_type"), answer),
                "category": str(item.get("content_type", "")), "modality": str(item.get("modality", "")),
                "q_lang": str(item.get("q_lang", ""))}, [str(image.resolve())])  # fmt: skip


def read_pmc_vqa(folder: Path, csv_path: Path, ds: Dataset, problems: list[str]) -> None:
    with open(csv_path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            figure = (row.get("Figure_path") or "").strip()
            image = pmc_vqa._locate(folder, figure) if figure else None
            label = (row.get("Answer_label") or "").strip().upper()
            options = {}
            for k in "ABCD":
                text = (row.get(f"Choice {k}") or "").strip()
                if text:
                    options[k] = re.sub(rf"^\s*{k}\s*:\s*", "", text)  # "A:CT" -> "CT"
            if image is None or label not in options:
                why = (
                    f"figure {figure!r} not found"
                    if image is None
                    else f"Answer_label {label!r} is no option"
                )
                problems.append(f"{csv_path}: line {n}: {why}; skipped")
                continue
            index = (row.get("index") or "").strip() or str(n - 2)
            ds.add({"index": index, "question": (row.get("Question") or "").strip(), **options, "answer": label,
                    "category": "PMC-VQA"}, [str(image.resolve())])  # fmt: skip


def read_mmmu(folder: Path, image_dir: Path, ds: Dataset, problems: list[str]) -> None:
    cols = ["id", "question", "options", "answer", "question_type", "subfield", *mmmu.IMAGE_COLUMNS]
    for subject in mmmu.SUBJECTS:
        for split in ("dev", "validation"):
            for path in sorted((folder / subject).glob(f"{split}-*.parquet")):
                for n, rec in enumerate(iter_parquet_rows(path, cols, batch_size=16)):
                    qid = str(rec.get("id") or f"{subject}_{split}_{n}")
                    try:
                        opts = ast.literal_eval(rec.get("options") or "[]")
                    except (ValueError, SyntaxError):
                        problems.append(f"{path}: {qid}: options are not a list; skipped")
                        continue
                    images = [
                        _write_image(image_dir / "MMMU", f"{qid}_{c}", data)
                        for c in mmmu.IMAGE_COLUMNS
                        if (data := struct_bytes(rec.get(c))) is not None
                    ]
                    if not images:
                        problems.append(f"{path}: {qid}: no image; skipped")
                        continue
                    row = {"index": qid, "question": str(rec.get("question", ""))}
                    row.update({LETTERS[i]: str(o) for i, o in enumerate(opts)})
                    row.update({"answer": str(rec.get("answer", "")), "split": split, "category": subject,
                                "l2-category": "Health_and_Medicine",
                                "question_type": str(rec.get("question_type", ""))})  # fmt: skip
                    ds.add(row, images)


# --- collecting every benchmark -------------------------------------------------------------------------


def collect(root: Path, image_dir: Path, problems: list[str]) -> tuple[dict[str, Dataset], list[str]]:
    """(datasets by name, present benchmarks that gave no question). TSV forms win over original layouts."""
    tsv_sets: dict[str, Dataset] = {}
    own: dict[str, Dataset] = {}
    present_specs: list[str] = []
    for loc in locate_all(root):
        if not is_present(loc):
            continue
        present_specs.append(loc.spec.name)
        for source in loc.sources:
            if source.kind == "tsv":
                read_tsv(source, image_dir, tsv_sets, problems)
            else:
                _read_layout(source, image_dir, own, problems)
    datasets = dict(tsv_sets)
    for name, ds in own.items():
        if name in datasets:
            problems.append(
                f"{name}: read from VLMEvalKit's TSV; the same split in {ds.sources} is not evaluated twice"
            )
        else:
            datasets[name] = ds
    datasets = {n: d for n, d in sorted(datasets.items()) if d.rows}
    answered = {d.benchmark for d in datasets.values()}
    empty = [b for b in present_specs if b not in answered]
    return datasets, empty


def _read_layout(
    source: BenchmarkSource, image_dir: Path, out: dict[str, Dataset], problems: list[str]
) -> None:
    spec, folder = source.spec.name, source.path

    def ds(name: str, task: str) -> Dataset:
        d = out.setdefault(name, Dataset(name, spec, task))
        d.sources.append(str(folder))
        return d

    if spec == "OmniMedVQA":
        read_omnimedvqa(folder, image_dir, ds("OmniMedVQA", "mcq"), problems)
    elif spec == "VQA-RAD":
        read_vqa_rad(folder, image_dir, ds("VQA-RAD_TEST", "vqa"), problems)
    elif spec == "SLAKE":
        read_slake(folder, image_dir, ds("SLAKE_TEST", "vqa"), problems)
    elif spec == "PMC-VQA":
        for csv_path in pmc_vqa.test_csvs(folder):
            suffix = csv_path.stem.removeprefix("test").upper()  # test_2.csv -> _2
            read_pmc_vqa(folder, csv_path, ds(f"PMC-VQA_TEST{suffix}", "mcq"), problems)
    elif spec == "PathVQA":
        for split, name in (("test", "PathVQA_TEST"), ("validation", "PathVQA_VAL")):
            files = sorted(folder.glob(f"data/{split}-*.parquet"))
            if files:
                read_hf_vqa(files, image_dir / "PathVQA", ds(name, "vqa"), problems)
        if any(d.is_dir() for d in pathvqa.image_folders(folder)):
            problems.append(
                f"{folder}: PathVQA's original questions are Python pickles (pvqa/qas/), never unpickled here "
                "(unpickling runs code); evaluate from the Hugging Face Parquet mirror or VLMEvalKit's TSV"
            )
    elif spec == "MMMU":
        read_mmmu(folder, image_dir, ds("MMMU_DEV_VAL", "mcq"), problems)


# --- typed rows and prompts -----------------------------------------------------------------------------


def rows_tsv(ds: Dataset) -> str:
    """The rows as a VLMEvalKit-style TSV (no image column), quoted where a cell has tabs or newlines."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(ds.columns)
    for row in ds.rows:
        writer.writerow([row.get(c, "") for c in ds.columns])
    return buf.getvalue()


def typed_frame(tsv_text: str | Path) -> pd.DataFrame:
    """pandas' reading of the rows, as VLMEvalKit's `load` (`pd.read_csv(sep='\\t')`) types them."""
    source = tsv_text if isinstance(tsv_text, Path) else io.StringIO(tsv_text)
    frame = pd.read_csv(source, sep="\t")
    frame["index"] = [str(x) for x in frame["index"]]
    return frame


def options_of(line: pd.Series) -> dict[str, object]:
    return {c: line[c] for c in LETTERS if c in line and not pd.isna(line[c])}


def build_prompt(line: pd.Series, task: str, n_images: int, interleave: bool) -> tuple[str, list[int]]:
    """(prompt text with `<image>` placeholders, which of the row's images go where, in order)."""
    question = line["question"]
    if task == "vqa":
        text = f"{question}{SHORT_SUFFIX}"
    else:
        options = options_of(line)
        hint = line["hint"] if ("hint" in line and not pd.isna(line["hint"])) else None
        text = f"Hint: {hint}\n" if hint is not None else ""
        text += f"Question: {question}\n"
        if options:
            text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items()) + MCQ_SUFFIX
    segments = text.split("<image ")
    if interleave and len(segments) > 1:
        order, out = [], [segments[0]]
        for seg in segments[1:]:
            if not (seg[:1].isdigit() and seg[1:2] == ">") or int(seg[0]) > n_images:
                return _images_first(text, n_images)
            order.append(int(seg[0]) - 1)
            out += [IMAGE_TOKEN, seg[2:]]
        return "".join(out), order
    return _images_first(text, n_images)


def _images_first(text: str, n_images: int) -> tuple[str, list[int]]:
    return IMAGE_TOKEN * n_images + ("\n" if n_images else "") + text, list(range(n_images))


# --- the question set on disk ---------------------------------------------------------------------------


@dataclass
class QuestionSet:
    folder: Path
    datasets: dict[str, dict]  # name -> {benchmark, task, questions, answered, sources, skipped_no_image}
    problems: list[str]
    empty: list[str]  # present benchmarks with no usable question: the caller fails on these

    @property
    def questions(self) -> int:
        return sum(d["questions"] for d in self.datasets.values())


def write_question_set(root: Path, folder: Path) -> QuestionSet:
    folder = Path(folder)
    (folder / INDEX_FILE).unlink(missing_ok=True)
    problems: list[str] = []
    datasets, empty = collect(Path(root), folder / "images", problems)
    index: dict[str, dict] = {}
    for name, ds in datasets.items():
        seen: set[str] = set()
        keep = [i for i, r in enumerate(ds.rows) if not (r["index"] in seen or seen.add(r["index"]))]
        if len(keep) < len(ds.rows):
            problems.append(
                f"{name}: {len(ds.rows) - len(keep)} rows repeat an index already read; first kept"
            )
            ds.rows, ds.images = [ds.rows[i] for i in keep], [ds.images[i] for i in keep]
        # A short-answer benchmark kept as multiple choice (options listed) is scored as multiple choice.
        if ds.task == "vqa" and any(r.get("A") for r in ds.rows):
            ds.task = "mcq"
        text = rows_tsv(ds)
        frame = typed_frame(text)
        interleave = name.startswith("MMMU")
        with io.StringIO() as lines:
            for (_, line), images in zip(frame.iterrows(), ds.images, strict=True):
                prompt, order = build_prompt(line, ds.task, len(images), interleave)
                rec = {"index": line["index"], "prompt": prompt, "images": [images[i] for i in order]}
                lines.write(json.dumps(rec, ensure_ascii=False) + "\n")
            atomic_write_text(folder / f"{name}.jsonl", lines.getvalue())
        atomic_write_text(folder / f"{name}.rows.tsv", text)
        answered = "answer" in frame and bool(frame["answer"].notna().any())
        index[name] = {"benchmark": ds.benchmark, "task": ds.task, "questions": len(frame), "answered": answered,
                       "sources": ds.sources, "skipped_no_image": ds.skipped_no_image}  # fmt: skip
        if not answered:
            problems.append(
                f"{name}: no answers in the files (a TEST split): predictions are written, not scored"
            )
    qs = QuestionSet(folder, index, problems, empty)
    atomic_write_text(
        folder / INDEX_FILE,
        json.dumps(
            {"benchmark_root": str(root), "datasets": index, "problems": problems, "empty": empty}, indent=2
        ),
    )
    return qs


def read_question_set(folder: Path) -> QuestionSet:
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no question set at {folder} ({INDEX_FILE} missing): materialize benchmark_questions"
        )
    data = json.loads(path.read_text())
    return QuestionSet(Path(folder), data["datasets"], data["problems"], data["empty"])


def iter_questions(folder: Path, dataset: str) -> Iterator[dict]:
    with open(Path(folder) / f"{dataset}.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
