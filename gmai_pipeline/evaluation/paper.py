"""Published figures of GMAI-VL (Li et al., "GMAI-VL & GMAI-VL-5.5M: A Large Vision-Language Model and A
Comprehensive Multimodal Dataset Towards General Medical AI", arXiv:2411.14522), for side-by-side tables.

All in percent, as printed. Table 7 is the training-stage ablation; the other tables give the paper's
GMAI-VL row, shown beside ours as a reference line. Column abbreviations are the paper's.
"""

from __future__ import annotations

CITATION = "Li et al., GMAI-VL & GMAI-VL-5.5M, arXiv:2411.14522"

# Table 7: Evaluation on the training strategy.
TABLE7_COLUMNS = ("MMMU_val", "OmniMedVQA", "GMAI_MMBench_val", "GMAI_MMBench_test")
TABLE7: dict[str, tuple[float, float, float, float]] = {
    "stage1": (46.00, 81.38, 51.49, 53.69),
    "stage1+2": (46.67, 84.64, 55.85, 58.28),
    "stage1+3": (45.33, 86.62, 59.25, 60.70),
    "stage1+2+3": (51.30, 88.48, 61.74, 62.43),
}

# Table 4 (VQA-RAD, SLAKE, PMC-VQA, Avg.), GMAI-VL (ours) and (w/o our data).
TABLE4 = {"GMAI-VL": {"VQA-RAD": 66.3, "SLAKE": 72.9, "PMC-VQA": 54.3, "Avg.": 64.5},
          "GMAI-VL (w/o our data)": {"VQA-RAD": 62.3, "SLAKE": 66.3, "PMC-VQA": 39.0, "Avg.": 55.9}}  # fmt: skip

# Table 5: OmniMedVQA by question type.
OMNI_TYPES = {
    "Modality Recognition": "MR",
    "Anatomy Identification": "AI",
    "Disease Diagnosis": "DD",
    "Lesion Grading": "LG",
    "Other Biological Attributes": "OBA",
}
TABLE5 = {"GMAI-VL": {"MR": 98.64, "AI": 92.95, "DD": 88.7, "LG": 87.21, "OBA": 82.95, "Overall": 88.48},
          "GMAI-VL (w/o our data)": {"MR": 96.40, "AI": 80.97, "DD": 79.14, "LG": 70.29, "OBA": 75.66,
                                     "Overall": 79.96}}  # fmt: skip

# Table 6: GMAI-MMBench clinical VQA tasks (abbreviations of the GMAI-MMBench paper, arXiv:2408.03361, Table 5).
MMBENCH_TASKS = {
    "Attribute Recognition": "AR",
    "Blood Vessels Recognition": "BVR",
    "Bone": "B",
    "Cell Recognition": "CR",
    "Counting": "C",
    "Disease Diagnosis": "DD",
    "Image Quality Grading": "IQG",
    "Microorganism Recognition": "MR",
    "Muscle": "M",
    "Nervous Tissue": "NT",
    "Organ Recognition - Abdomen": "OR-A",
    "Organ Recognition - Head and Neck": "OR-HN",
    "Organ Recognition - Pelvic": "OR-P",
    "Organ Recognition - Thorax": "OR-T",
    "Severity Grading": "SG",
    "Surgeon Action Recognition": "SAR",
    "Surgical Instrument Recognition": "SIR",
    "Surgical Workflow Recognition": "SWR",
}
TABLE6 = {"GMAI-VL": {"Overall (val)": 61.74, "Overall (test)": 62.43, "AR": 75.26, "BVR": 59.66, "B": 67.24,
                      "CR": 56.86, "C": 54.29, "DD": 67.14, "IQG": 42.80, "MR": 79.97, "M": 41.60, "NT": 75.00,
                      "OR-A": 60.45, "OR-HN": 75.48, "OR-P": 53.33, "OR-T": 58.12, "SG": 42.09, "SAR": 72.31,
                      "SIR": 37.40, "SWR": 59.14}}  # fmt: skip

# Table 8: MMMU Health & Medicine, validation split, by subject.
MMMU_SUBJECTS = {
    "Basic_Medical_Science": "BMS",
    "Clinical_Medicine": "CM",
    "Diagnostics_and_Laboratory_Medicine": "DLM",
    "Pharmacy": "P",
    "Public_Health": "PH",
}
TABLE8 = {"GMAI-VL": {"BMS": 50.0, "CM": 60.0, "DLM": 43.3, "P": 50.0, "PH": 53.3, "MMMU (H&M)": 51.3}}


def abbreviate(name: str, table: dict[str, str]) -> str:
    """The paper's column name for a category value (matched loosely: case, spaces, dashes); else the value."""

    def key(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    by_key = {key(k): v for k, v in table.items()}
    return by_key.get(key(str(name)), str(name))
