"""Chinese translation: which records (a deterministic ~30% by hash of the record id) and the checks.

The share is decided by the id alone, so it is stable across runs and independent of shard count.
"Is it Chinese" is the share of CJK characters among letters once the kept medical terms (the
label and its synonyms, which the prompt asks to keep in English) are taken out.
"""

from __future__ import annotations

import hashlib
import re

from gmai_pipeline.generation.prompts import label_terms

DEFAULT_FRACTION = 0.3
MIN_CJK_SHARE = 0.5
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def selected(record_id: str, fraction: float = DEFAULT_FRACTION) -> bool:
    digest = hashlib.sha256(f"translate:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def cjk_share(text: str, keep_terms: list[str] = ()) -> float:
    """CJK characters / (CJK characters + Latin letters), ignoring the kept terms; 0 for no letters."""
    for term in sorted(keep_terms, key=len, reverse=True):
        text = re.sub(re.escape(term), " ", text, flags=re.IGNORECASE)
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return cjk / (cjk + latin) if cjk + latin else 0.0


def keeps_term(text: str, label: str) -> bool:
    lowered = text.lower()
    return any(term in lowered for term in label_terms(label))
