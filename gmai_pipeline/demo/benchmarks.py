"""Demo benchmark files in the real layouts, with training images planted in them on purpose.

Seven benchmarks in the forms users download them: GMAI-MMBench (VLMEvalKit TSV), OmniMedVQA (original
JSON + images), VQA-RAD (OSF JSON + image folder), SLAKE (`Slake1.0/test.json` + `imgs/`), PMC-VQA
(`test.csv` + `images/`), PathVQA (VLMEvalKit's `PathVQA_TEST.tsv`) and MMMU (Hugging Face Parquet per
subject). Each carries real-format questions, options and answers, so the evaluation runs end to end.

Decontamination must remove the planted training images and nothing else. `PLANTED` says which
benchmark item copies which demo training file and by which method it should be caught:
`md5` (exact file bytes), `pixel` (same decoded pixels, different bytes) or `phash` (re-encoded
or resized: only a perceptual hash sees it). The other benchmark images are synthetic pictures
unlike any demo training image (false-positive bait).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw
from scipy import ndimage

from gmai_pipeline.demo._files import build_atomically, jpeg_bytes, png_bytes
from gmai_pipeline.demo.images2d import endoscopy_files, fundus_files, histology_files, skin_files

MMBENCH_DIR = "GMAI-MMBench"
MMBENCH_TSV = "GMAI-MMBench_VAL.tsv"
OMNI_DIR = "OmniMedVQA"
OMNI_DATASET = "DemoSet"

FUNDUS_EXACT = "train/diabetic_retinopathy/fundus_005.jpg"
HISTOLOGY_REENCODED = "ihc_r1_c2.png"
ENDOSCOPY_RESIZED = "JPEGImages/frame_0003.jpg"
SKIN_EXACT = "images/lesion_002.png"
SKIN_PIXEL = "images/lesion_006.png"

PLANTED: list[dict[str, str]] = [
    {
        "benchmark": "GMAI-MMBench_VAL",
        "item_id": "1",
        "training_dataset": "demo_fundus_folder",
        "source_path": FUNDUS_EXACT,
        "method": "md5",
        "how": "base64 of the exact training file bytes",
    },
    {
        "benchmark": "GMAI-MMBench_VAL",
        "item_id": "2",
        "training_dataset": "demo_histology_csv",
        "source_path": HISTOLOGY_REENCODED,
        "method": "phash",
        "how": "JPEG re-encode (PIL quality 75), as VLMEvalKit stores images",
    },
    {
        "benchmark": "GMAI-MMBench_VAL",
        "item_id": "3",
        "training_dataset": "demo_endoscopy_voc",
        "source_path": ENDOSCOPY_RESIZED,
        "method": "phash",
        "how": "resized to 80% and re-encoded as JPEG (quality 75)",
    },
    {
        "benchmark": "OmniMedVQA",
        "item_id": f"{OMNI_DATASET}_0001",
        "training_dataset": "demo_skin_masks",
        "source_path": SKIN_EXACT,
        "method": "md5",
        "how": "exact file copy",
    },
    {
        "benchmark": "OmniMedVQA",
        "item_id": f"{OMNI_DATASET}_0002",
        "training_dataset": "demo_skin_masks",
        "source_path": SKIN_PIXEL,
        "method": "pixel",
        "how": "lossless PNG re-save at another compression level (same pixels, different bytes)",
    },
]


def unrelated_images(n: int, seed: int) -> list[np.ndarray]:
    """Distinct synthetic pictures (speckle fans, cell fields, shapes) unlike any demo training image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 288, 352
        kind = i % 3
        if kind == 0:  # ultrasound-like sector with speckle
            yy, xx = np.mgrid[0:h, 0:w]
            r, a = np.hypot(yy, xx - w / 2), np.arctan2(xx - w / 2, yy)
            fan = (r < h * rng.uniform(0.85, 0.98)) & (np.abs(a) < rng.uniform(0.5, 0.75))
            speckle = rng.rayleigh(0.35, (h, w)) * (
                0.6 + 0.4 * ndimage.gaussian_filter(rng.random((h, w)), 10)
            )
            organ = np.hypot(yy - rng.uniform(0.4, 0.7) * h, xx - rng.uniform(0.35, 0.65) * w) < rng.uniform(
                30, 60
            )
            img = np.where(fan, speckle * np.where(organ, 0.35, 1.0), 0.0)
            arr = np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        elif kind == 1:  # purple cell field (microscopy-like)
            pil = Image.new("RGB", (w, h), (236, 214, 236))
            draw = ImageDraw.Draw(pil)
            for _ in range(int(rng.integers(25, 45))):
                cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 16)
                colour = tuple(int(c) for c in rng.integers([60, 20, 90], [130, 70, 170]))
                draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=colour)
            arr = np.asarray(pil)
        else:  # bold geometric composition
            pil = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(pil)
            for _ in range(6):
                x0, y0 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
                box = [x0, y0, x0 + rng.uniform(40, 160), y0 + rng.uniform(40, 140)]
                fill = tuple(int(c) for c in rng.integers(0, 255, 3))
                (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
            arr = np.asarray(pil)
        out.append(arr)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _mmbench_tsv() -> bytes:
    """VLMEvalKit TSV: index, base64 image, question, options A-E, answer and grouping columns."""
    fundus = fundus_files()[FUNDUS_EXACT]
    histo = Image.open(io.BytesIO(histology_files()[HISTOLOGY_REENCODED])).convert("RGB")
    endo = Image.open(io.BytesIO(endoscopy_files()[ENDOSCOPY_RESIZED])).convert("RGB")
    endo = endo.resize((round(endo.width * 0.8), round(endo.height * 0.8)), Image.Resampling.BILINEAR)
    images: list[str] = [
        _b64(fundus),
        _b64(jpeg_bytes(histo, quality=75)),
        _b64(jpeg_bytes(endo, quality=75)),
    ]
    images += [_b64(jpeg_bytes(a, quality=75)) for a in unrelated_images(5, seed=9001)]
    images.insert(3, "5")  # row 4 reuses row 5's image: a short back-reference, as VLMEvalKit writes them
    meta = [
        ("Which finding is visible in this fundus photograph?", ["Hard exudates", "Normal fundus", "Papilledema", "Retinal detachment"], "A", "Fundus", "Ophthalmology", "Disease Diagnosis", "Image Level"),
        ("Which stain produces the brown signal in this slide?", ["Hematoxylin", "Eosin", "DAB", "PAS"], "C", "Pathology", "Laboratory Medicine and Pathology", "Tissue Recognition", "Image Level"),
        ("What lesion is shown in this colonoscopy frame?", ["Polyp", "Ulcer", "Diverticulum", "Normal mucosa"], "A", "Endoscopy", "Gastroenterology", "Lesion Detection", "Image Level"),
        ("Which imaging modality produced this image?", ["CT", "Ultrasound", "MR", "X-Ray"], "B", "Ultrasound", "Obstetrics and Gynecology", "Modality Recognition", "Image Level"),
        ("Which imaging modality produced this image?", ["Ultrasound", "CT", "PET", "Fundus"], "A", "Ultrasound", "Obstetrics and Gynecology", "Modality Recognition", "Image Level"),
        ("What kind of cells dominate this field?", ["Erythrocytes", "Stained nuclei", "Adipocytes", "Neurons"], "B", "Microscopy", "Hematology", "Cell Recognition", "Image Level"),
        ("Is this image of diagnostic quality?", ["Yes", "No", "Cannot tell", "Partially"], "B", "Natural Image", "General Surgery", "Quality Assessment", "Image Level"),
        ("Which imaging modality produced this image?", ["MR", "Endoscopy", "Ultrasound", "OCT"], "C", "Ultrasound", "Obstetrics and Gynecology", "Modality Recognition", "Image Level"),
        ("What kind of cells dominate this field?", ["Nuclei", "Platelets", "Bacteria", "Crystals"], "A", "Microscopy", "Hematology", "Cell Recognition", "Image Level"),
    ]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(
        ["index", "image", "question", "A", "B", "C", "D", "E", "answer", "category", "department",
         "clinical vqa task", "perceptual granularity"]
    )  # fmt: skip
    for i, (image, (question, options, answer, category, dept, task, gran)) in enumerate(
        zip(images, meta, strict=True), start=1
    ):
        writer.writerow([i, image, question, *options, "", answer, category, dept, task, gran])
    return buf.getvalue().encode()


def _omnimedvqa_files() -> dict[str, bytes]:
    """OmniMedVQA original layout: `QA_information/Open-access/<set>.json` + `Images/<set>/`."""
    skin = skin_files()
    resaved = io.BytesIO()
    Image.open(io.BytesIO(skin[SKIN_PIXEL])).save(resaved, format="PNG", compress_level=1)
    images = {"dermo_0001.png": skin[SKIN_EXACT], "dermo_0002.png": resaved.getvalue()}
    for i, arr in enumerate(unrelated_images(3, seed=31337), start=3):
        images[f"misc_{i:04d}.png"] = png_bytes(arr)
    qa = []
    questions = [
        ("Disease Diagnosis", "What does this dermoscopy image show?", ["Pigmented skin lesion", "Normal skin", "Burn", "Psoriasis plaque"], "Dermoscopy"),
        ("Disease Diagnosis", "What is the most likely finding?", ["Healthy skin", "Pigmented skin lesion", "Laceration", "Tattoo"], "Dermoscopy"),
        ("Modality Recognition", "Which modality is this?", ["Ultrasound", "CT", "MR", "X-Ray"], "Ultrasound"),
        ("Cell Recognition", "What is shown?", ["Bone", "Cells", "Vessel", "Lung"], "Microscopy"),
        ("Quality Assessment", "Is this a medical image?", ["No", "Yes", "Unclear", "Partially"], "Natural Image"),
    ]  # fmt: skip
    for i, ((qtype, question, options, modality), name) in enumerate(
        zip(questions, images, strict=True), start=1
    ):
        answer = {1: options[0], 2: options[1], 3: options[0], 4: options[1], 5: options[0]}[i]
        item = {
            "question_id": f"{OMNI_DATASET}_{i:04d}",
            "question_type": qtype,
            "question": question,
            "gt_answer": answer,
            "image_path": f"Images/{OMNI_DATASET}/{name}",
            "modality_type": modality,
        }
        item.update({f"option_{letter}": text for letter, text in zip("ABCD", options, strict=True)})
        qa.append(item)
    files = {f"Images/{OMNI_DATASET}/{name}": data for name, data in images.items()}
    files[f"QA_information/Open-access/{OMNI_DATASET}.json"] = (json.dumps(qa, indent=2) + "\n").encode()
    return files


def _jpegs(n: int, seed: int) -> list[bytes]:
    return [jpeg_bytes(a, quality=85) for a in unrelated_images(n, seed=seed)]


def _vqa_rad_files() -> dict[str, bytes]:
    """OSF release: one JSON list (`qid`, `image_name`, `question`, `answer`, `answer_type`, `phrase_type`)."""
    names = [f"synpic{40000 + i}.jpg" for i in range(3)]
    files = {f"VQA_RAD Image Folder/{n}": data for n, data in zip(names, _jpegs(3, seed=4101), strict=True)}
    qa = [
        (names[0], "Is there a mass in the image?", "yes", "CLOSED", "PRES", "test_freeform"),
        (names[0], "Which organ is imaged?", "liver", "OPEN", "ORGAN", "test_freeform"),
        (names[1], "Is the image normal?", "no", "CLOSED", "ABN", "test_para"),
        (names[1], "What imaging modality is used?", "ultrasound", "OPEN", "MODALITY", "test_freeform"),
        (names[2], "Is this an axial view?", "yes", "CLOSED", "PLANE", "test_freeform"),
        (names[2], "Where is the lesion?", "left lobe", "OPEN", "POS", "freeform"),  # a training question
    ]  # fmt: skip
    items = [
        {"qid": 100 + i, "image_name": img, "image_organ": "ABD", "question": q, "answer": a, "answer_type": t,
         "question_type": qt, "phrase_type": phrase}
        for i, (img, q, a, t, qt, phrase) in enumerate(qa)
    ]  # fmt: skip
    files["VQA_RAD Dataset Public.json"] = (json.dumps(items, indent=1) + "\n").encode()
    return files


def _slake_files() -> dict[str, bytes]:
    """`Slake1.0/test.json` (English and Chinese questions over the same images) + `imgs/xmlabN/source.jpg`."""
    images = _jpegs(2, seed=4202)
    files = {f"Slake1.0/imgs/xmlab{900 + i}/source.jpg": data for i, data in enumerate(images)}
    qa = [
        (0, "Does the picture contain the liver?", "Yes", "CLOSED", "Organ", "en"),
        (0, "What modality is used to take this image?", "CT", "OPEN", "Modality", "en"),
        (0, "图中包含肝脏吗?", "是", "CLOSED", "Organ", "zh"),
        (1, "Is this a study of the chest?", "No", "CLOSED", "Position", "en"),
        (1, "Which part of the body does this image belong to?", "Abdomen", "OPEN", "Position", "en"),
    ]  # fmt: skip
    items = [
        {"img_id": 900 + img, "img_name": f"xmlab{900 + img}/source.jpg", "question": q, "answer": a,
         "q_lang": lang, "location": "Abdomen", "modality": "CT", "answer_type": t, "base_type": "vqa",
         "content_type": c, "triple": ["vhead", "_", "_"], "qid": 7000 + i}
        for i, (img, q, a, t, c, lang) in enumerate(qa)
    ]  # fmt: skip
    files["Slake1.0/test.json"] = (json.dumps(items, ensure_ascii=False, indent=1) + "\n").encode()
    return files


def _pmc_vqa_files() -> dict[str, bytes]:
    """`test.csv`: `Figure_path`, `Question`, `Answer`, `Choice A`..`Choice D` ("A:CT"), `Answer_label`."""
    names = [f"PMC{8800000 + i}_Fig{i + 1}_0.jpg" for i in range(3)]
    files = {f"images/{n}": data for n, data in zip(names, _jpegs(3, seed=4303), strict=True)}
    rows = [
        (names[0], "What imaging modality was used?", "Ultrasound", ["CT", "MRI", "Ultrasound", "PET"], "C"),
        (names[1], "What does the image show?", "Stained cells", ["Stained cells", "Bone", "Vessels", "Air"], "A"),
        (names[2], "What kind of figure is this?", "Diagram", ["Photograph", "Diagram", "X-ray", "Endoscopy"], "B"),
    ]  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D",
                "Answer_label"])  # fmt: skip
    for i, (fig, q, a, choices, label) in enumerate(rows):
        w.writerow([i, fig, q, a, *(f"{k}:{c}" for k, c in zip("ABCD", choices, strict=True)), label])
    files["test.csv"] = buf.getvalue().encode()
    return files


def _pathvqa_tsv() -> bytes:
    """VLMEvalKit's `PathVQA_TEST.tsv`: `index`, `image` (base64), `question`, `answer`."""
    qa = [
        ("Is this a hematoxylin and eosin stain?", "yes"),
        ("Are the nuclei enlarged?", "no"),
        ("What is present in the tissue?", "inflammatory cells"),
    ]
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["index", "image", "question", "answer"])
    for i, ((q, a), data) in enumerate(zip(qa, _jpegs(3, seed=4404), strict=True)):
        w.writerow([i, _b64(data), q, a])
    return buf.getvalue().encode()


def _mmmu_files() -> dict[str, bytes]:
    """HF `MMMU/MMMU`: `<Subject>/{dev,validation}-00000-of-00001.parquet`, options as a Python-list string."""
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = _jpegs(4, seed=4505)
    questions = [
        ("dev", "Clinical_Medicine", "<image 1> What is the most likely diagnosis?", ["Pneumonia", "Fracture", "Normal"], "A", "multiple-choice"),
        ("validation", "Clinical_Medicine", "Which organ is shown in <image 1>?", ["Heart", "Liver", "Kidney", "Lung"], "B", "multiple-choice"),
        ("validation", "Clinical_Medicine", "How many lesions are visible in <image 1>?", [], "2", "open"),
        ("validation", "Public_Health", "<image 1> The chart shows the incidence of which disease?", ["Measles", "Influenza", "Malaria", "Cholera"], "C", "multiple-choice"),
    ]  # fmt: skip
    files: dict[str, bytes] = {}
    by_file: dict[str, list[dict]] = {}
    for n, ((split, subject, question, options, answer, qtype), data) in enumerate(
        zip(questions, images, strict=True)
    ):
        rec = {"id": f"{split}_{subject}_{n + 1}", "question": question, "options": str(options),
               "explanation": "", "image_1": {"bytes": data, "path": f"{n}.jpg"}, "img_type": "['Photographs']",
               "answer": answer, "topic_difficulty": "Medium", "question_type": qtype, "subfield": "Demo"}  # fmt: skip
        for k in range(2, 8):
            rec[f"image_{k}"] = None
        by_file.setdefault(f"{subject}/{split}-00000-of-00001.parquet", []).append(rec)
    for rel, recs in by_file.items():
        schema = pa.schema([(c, struct if c.startswith("image_") else pa.string()) for c in recs[0]])
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(recs, schema=schema), out)
        files[rel] = out.getvalue()
    return files


EXTRA: dict[str, object] = {
    "VQA-RAD": _vqa_rad_files,
    "SLAKE": _slake_files,
    "PMC-VQA": _pmc_vqa_files,
    "PathVQA": lambda: {"PathVQA_TEST.tsv": _pathvqa_tsv()},
    "MMMU": _mmmu_files,
}


def ensure_demo_benchmarks(root: Path) -> Path:
    """Write the demo benchmarks under `root` (idempotent, atomic per benchmark); returns `root`."""
    from gmai_pipeline.demo._files import write_files

    root = Path(root)
    build_atomically(root / MMBENCH_DIR, lambda d: write_files(d, {MMBENCH_TSV: _mmbench_tsv()}))
    build_atomically(root / OMNI_DIR, lambda d: write_files(d, _omnimedvqa_files()))
    for folder, files in EXTRA.items():
        build_atomically(root / folder, lambda d, files=files: write_files(d, files()))
    return root
