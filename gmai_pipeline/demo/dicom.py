"""The DICOM demo: real CT files from pydicom / pydicom-data, stamped with fake patient data.

The stamped values (`DEMO_PHI_VALUES`) are synthetic but look real, so the downstream test that
no header value leaks into any output has something concrete to search for. Two extra files
exercise normalization's quarantine: an ultrasound image with no `BurnedInAnnotation` (burned-in
text risk) and a 12-bit JPEG-lossy file that Pillow cannot decode (unsupported codec).
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache

# Synthetic identifiers stamped into every demo DICOM file; tests import this to look for leaks.
DEMO_PHI_VALUES: dict[str, str] = {
    "PatientName": "DOE^JANE",
    "PatientID": "GMAI-DEMO-0001",
    "PatientBirthDate": "19610412",
    "PatientSex": "F",
    "InstitutionName": "Demo General Hospital",
    "ReferringPhysicianName": "SMITH^JOHN",
    "AccessionNumber": "ACC20230914001",
    "StudyDate": "20230914",
    "SeriesDate": "20230914",
    "StudyTime": "101530",
}

# (file written, pydicom test file, label)
CT_FILES = (
    ("ct_001.dcm", "CT_small.dcm", "chest"),  # NEMA WG04 CT1, thoracic vertebra level
    ("ct_002.dcm", "693_UNCR.dcm", "head"),  # CQ500 head CT slice (pydicom-data)
    ("ct_003.dcm", "J2K_pixelrep_mismatch.dcm", "head"),  # head CT, JPEG 2000 (pydicom-data)
    ("ct_004.dcm", "explicit_VR-UN.dcm", "abdomen"),  # pancreas CT, JPEG 2000 (pydicom-data)
)
# Quarantine cases for normalization (kept in labels.csv so they are inputs, not strays).
BURNED_IN_RISK_FILE = ("us_burned_in_risk.dcm", "examples_rgb_color.dcm", "abdomen")  # US, tag absent
UNDECODABLE_FILE = (
    "jpeg_lossy_12bit.dcm",
    "JPEG-lossy.dcm",
    "abdomen",
)  # JPEG Extended 12-bit, BurnedInAnnotation NO


def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed (install pydicom-data)")
    return str(path)


def _stamped(name: str, burned_in: str | None = None) -> bytes:
    """A copy of a pydicom test file with DEMO_PHI_VALUES stamped in; `burned_in` "" drops
    BurnedInAnnotation, a value sets it, None keeps the file's own."""
    import pydicom

    ds = pydicom.dcmread(_testdata(name))
    for keyword, value in DEMO_PHI_VALUES.items():
        setattr(ds, keyword, value)
    if burned_in == "" and "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    elif burned_in:
        ds.BurnedInAnnotation = burned_in
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@lru_cache(maxsize=1)
def ct_dicom_files() -> dict[str, bytes]:
    """DICOM files + `labels.csv` (`file,label`)."""
    files: dict[str, bytes] = {}
    rows = ["file,label"]
    for out, src, label in CT_FILES:
        files[out] = _stamped(src)
        rows.append(f"{out},{label}")
    # The undecodable file declares no burned-in text, so only its codec can send it to quarantine.
    for (out, src, label), burned_in in ((BURNED_IN_RISK_FILE, ""), (UNDECODABLE_FILE, "NO")):
        files[out] = _stamped(src, burned_in=burned_in)
        rows.append(f"{out},{label}")
    files["labels.csv"] = ("\n".join(rows) + "\n").encode()
    return files
